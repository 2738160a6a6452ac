"""The CLI's errors: each is one line for the user and an exit code for scripts."""

from __future__ import annotations

OK = 0
ERROR = 1  # the command could not do what was asked (API, job state, bad input file)
USAGE = 2  # the command line itself is wrong (argparse uses 2 as well)


class CliError(Exception):
    """A failure the user can act on; main() prints `error: <message>` and exits with `code`."""

    def __init__(self, message: str, code: int = ERROR) -> None:
        super().__init__(message)
        self.code = code
