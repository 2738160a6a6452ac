"""`python -m bench.profile_summary DIR...`: where the phalanx operator's CPU went, from the raw
(folded) py-spy profiles that PHALANX_BENCH_PROFILE=DIR leaves: share of samples per category.

A sample goes to the category of its innermost frame that names one (the leaf's owner): JSON decoding
called by kopf counts as JSON decoding, a deepcopy called by kopf as kopf's, stdlib frames in
between are skipped. Categories are tried in CATEGORIES order on each frame.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

# (category, substrings of a frame "function (file:line)"), most specific first.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JSON decoding / encoding", ("json/decoder.py", "json/encoder.py", "json/__init__.py", "orjson")),
    (
        "TLS handshakes (new API connections)",
        ("do_handshake", "ssl_wrap_socket", "SSLContext", "create_urllib3_context"),
    ),
    (
        "kubernetes client: response → typed models",
        ("__deserialize", "ApiClient.deserialize", "kubernetes/client/models/"),
    ),
    ("kubernetes client: request serialization", ("sanitize_for_serialization",)),
    ("pydantic validate_call wrapper (kubernetes client)", ("pydantic/_internal/_validate_call.py",)),
    (
        "HTTP + TLS I/O (urllib3, ssl, aiohttp transport)",
        ("urllib3/", "ssl.py", "http/client.py", "aiohttp/", "socket.py"),
    ),
    ("kubernetes client: other", ("kubernetes/client",)),
    ("phalanx: gang admission", ("phalanx/controller/admitter.py", "phalanx/core/admission.py")),
    (
        "phalanx: reconcile + pod/status building",
        ("phalanx/core/reconcile.py", "phalanx/core/pods.py", "phalanx/core/observe.py", "phalanx/core/conditions.py"),
    ),
    ("pydantic models (phalanx's API types)", ("pydantic/", "pydantic_core")),
    ("phalanx: indexes (cache views)", ("phalanx/controller/caches.py", "handlers.py")),
    ("phalanx: other", ("phalanx/",)),
    (
        "kopf: diff-base, patches, deepcopy, handler kwargs",
        ("kopf/_cogs/structs/diffs.py", "kopf/_cogs/configs/", "kopf/_core/actions/", "kopf/_core/intents/causes.py"),
    ),
    ("kopf: indexes", ("kopf/_core/engines/indexing.py",)),
    ("kopf: watch stream + event dispatch", ("kopf/",)),
    ("prometheus-client / logging", ("prometheus_client", "logging/")),
    ("event loop, thread pool hand-offs", ("asyncio/", "concurrent/futures/", "threading.py", "selectors.py")),
    ("other", ("",)),
)


def category(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for name, needles in CATEGORIES[:-1]:
            if any(n in frame for n in needles):
                return name
    return CATEGORIES[-1][0]


def summarize(paths: list[Path]) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if stack and n.isdigit():
                counts[category(stack)] += int(n)
    return counts, sum(counts.values())


def main(argv: list[str]) -> None:
    paths = [p for d in argv for p in (sorted(Path(d).glob("*.txt")) if Path(d).is_dir() else [Path(d)])]
    counts, total = summarize(paths)
    print(f"{total} samples from {len(paths)} profile(s)")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / max(total, 1):.1f} % |")


if __name__ == "__main__":
    main(sys.argv[1:])
