"""`python -m phalanx.controller`: run the operator for all namespaces (or PHALANX_WATCH_NAMESPACE)."""

from __future__ import annotations

import importlib
import sys

from kopf.cli import main

from phalanx.core.settings import ConfigError

if __name__ == "__main__":
    try:
        # Reads and checks every setting; kopf's `-m` below then finds the module already loaded.
        main_module = importlib.import_module("phalanx.controller.main")
    except ConfigError as e:  # every setting's error, the lease's and the scraper's too
        print(f"phalanx operator: bad setting: {e}", file=sys.stderr)
        sys.exit(2)
    namespace = main_module.SETTINGS.watch_namespace
    scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    sys.argv = ["kopf", "run", "--standalone", *scope, "-m", "phalanx.controller.main", *sys.argv[1:]]
    main()
