"""The one error type the CLI turns into a single line on stderr and a non-zero exit."""

from __future__ import annotations


class ClusterError(Exception):
    """A failure the user can act on. The message is one line and says what to do next."""

    def __init__(self, message: str) -> None:
        # Collapse newlines: the CLI contract is one line per error.
        super().__init__(" ".join(message.split()))


class BinariesMissing(ClusterError):
    """The cached control-plane binaries are not built (yet)."""
