"""Entry-point wrapper: contract errors and preemption become the contract's exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from phalanx import contract
from phalanx_trainer.errors import ContractError, Preempted, PreflightFailed, RuntimeConfigError


def run_main(main: Callable[[], int | None], prog: str) -> NoReturn:
    """Run `main` and exit: 0 (or its code), EXIT_BAD_CONTRACT, EXIT_PREFLIGHT_FAILED or 1 with one stderr
    line, or EXIT_PREEMPTED."""
    try:
        code = main()
    except ContractError as e:
        # One line, no traceback: it is what `kubectl logs` and the termination message show.
        print(f"{prog}: bad contract: {e}", file=sys.stderr, flush=True)
        sys.exit(contract.EXIT_BAD_CONTRACT)
    except PreflightFailed as e:
        print(f"{prog}: preflight failed: {e}", file=sys.stderr, flush=True)
        sys.exit(contract.EXIT_PREFLIGHT_FAILED)
    except RuntimeConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Preempted as e:
        print(f"{prog}: {e}; exiting {contract.EXIT_PREEMPTED}", file=sys.stderr, flush=True)
        sys.exit(contract.EXIT_PREEMPTED)
    sys.exit(code or 0)
