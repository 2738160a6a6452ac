"""The runtime's own exceptions, mapped to the contract's exit codes by `phalanx_trainer.cli`."""

from __future__ import annotations


class ContractError(Exception):
    """The operator's env is missing or garbled. Permanent: retrying the same pod cannot help.

    The message always starts with the variable's name so the single stderr line the CLI prints
    (and the pod's termination message) says what to fix.
    """

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class Preempted(Exception):
    """Raised after a SIGTERM-triggered checkpoint has been saved; the CLI exits EXIT_PREEMPTED."""

    def __init__(self, step: int, saved: bool) -> None:
        super().__init__(f"preempted at step {step} (checkpoint {'saved' if saved else 'not saved'})")
        self.step = step
        self.saved = saved


class RuntimeConfigError(Exception):
    """The image or the program is set up in a way that cannot work (e.g. Keras 3 with MWMS fit).

    Permanent like a contract error, but not the operator's fault: the CLI prints one line and
    exits 1.
    """


class PreflightFailed(Exception):
    """The preflight check failed in this pod; the message names the cause (which peer, which step).

    The CLI prints one line and exits EXIT_PREFLIGHT_FAILED, which the operator reads as a bad node."""
