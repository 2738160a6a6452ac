"""The CLI's cluster tests reuse the e2e suite's process node and operator process (tests/e2e/conftest.py)."""

from tests.e2e.conftest import e2e_operator, procnode  # noqa: F401 - fixtures, used by test_cli_procnode.py
