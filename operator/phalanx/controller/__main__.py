"""`python -m phalanx.controller`: run the operator for all namespaces (or PHALANX_NAMESPACE)."""

from __future__ import annotations

import os
import sys

from kopf.cli import main

if __name__ == "__main__":
    namespace = os.environ.get("PHALANX_WATCH_NAMESPACE")
    scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    sys.argv = ["kopf", "run", "--standalone", *scope, "-m", "phalanx.controller.main", *sys.argv[1:]]
    main()
