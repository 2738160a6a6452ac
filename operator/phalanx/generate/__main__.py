"""`python -m phalanx.generate [--check]`: write every generated file, or fail listing the ones that drifted."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from phalanx.generate.artifacts import artifacts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a generated file differs from its source")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    args = parser.parse_args()
    drifted = []
    for rel, render in artifacts().items():
        path = args.root / rel
        want = render()
        have = path.read_text() if path.exists() else ""
        if have == want:
            continue
        if args.check:
            drifted.append(rel)
            diff = difflib.unified_diff(
                have.splitlines(), want.splitlines(), f"{rel} (committed)", f"{rel} (generated)", lineterm="", n=1
            )
            print("\n".join(list(diff)[:40]), file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(want)
            print(f"wrote {rel}")
    if drifted:
        print(
            f"error: generated files drifted from their sources: {', '.join(drifted)}; run `make generate`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
