"""The `kubectl-phalanx` command line: flags in kubectl's habits, one function per subcommand.

Exit codes: 0 done, 1 the command failed (one line on stderr saying why), 2 the command line is
wrong (argparse's usage message). Never a traceback: an unexpected exception is one line too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from phalanx import __version__
from phalanx.cli import convert, logs, plot, render, status, top
from phalanx.cli.cluster import Cluster
from phalanx.cli.errors import ERROR, USAGE, CliError
from phalanx.contract import DEFAULT_METRICS_PORT
from phalanx.controller.scraper import ENV_NETWORKS, ScrapeSettings
from phalanx.core.observe import pod_view
from phalanx.core.settings import ConfigError


def _connect(args: argparse.Namespace) -> tuple[Cluster, str]:
    cluster = Cluster(kubeconfig=args.kubeconfig, context=args.context)
    return cluster, args.namespace or cluster.namespace


def run_status(args: argparse.Namespace) -> int:
    cluster, ns = _connect(args)
    body = cluster.job(ns, args.job)
    pods = cluster.pods(ns, args.job)
    port = int(((body.get("spec") or {}).get("metrics") or {}).get("port") or DEFAULT_METRICS_PORT)
    attempt = int((body.get("status") or {}).get("attempt") or 0)
    views = [pod_view(p) for p in pods]
    # The operator's own rule for which pod addresses may be contacted (test clusters: this machine only).
    try:
        allowed = ScrapeSettings.from_env({ENV_NETWORKS: os.environ.get(ENV_NETWORKS, "")})
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    live = [p for p in views if p.attempt == attempt and p.phase == "Running" and p.ip]
    metrics = cluster.trainer_metrics(ns, [(p.name, p.ip or "", port) for p in live if allowed.allows(p.ip or "")])
    skipped = {p.name for p in live if not allowed.allows(p.ip or "")}
    now = datetime.now(UTC)
    r = status.report(body, pods, cluster.events(ns, body), metrics, now, skipped=skipped)
    sys.stdout.write(render.dump(r, args.output) if args.output else status.text(r, now))
    return 0


def run_top(args: argparse.Namespace) -> int:
    cluster, ns = _connect(args)
    rows = top.rows(cluster.jobs(None if args.all_namespaces else ns), datetime.now(UTC), args.sort_by)
    if args.output:
        sys.stdout.write(render.dump(rows, args.output))
    elif not rows:
        where = "in any namespace" if args.all_namespaces else f"in namespace {ns}"
        print(f"No TrainingJobs found {where}.", file=sys.stderr)  # kubectl's wording; still exit 0
    else:
        sys.stdout.write(top.text(rows, args.all_namespaces))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    cluster, ns = _connect(args)
    if args.follow:
        logs.follow_logs(cluster, ns, args.job, args.rank, args.attempt, args.timestamps, sys.stdout)
    else:
        logs.print_logs(cluster, ns, args.job, args.rank, args.attempt, args.timestamps, sys.stdout)
    return 0


def _read_manifests(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not YAML: {' '.join(str(exc).split())}") from None
    if not docs:
        raise CliError(f"{path} holds no manifest")
    return docs


def run_convert(args: argparse.Namespace) -> int:
    out = []
    docs = _read_manifests(args.file)
    for i, doc in enumerate(docs, 1):
        where = f"{args.file}" + (f" (document {i})" if len(docs) > 1 else "")
        if not isinstance(doc, dict):
            raise CliError(f"{where}: not a Kubernetes object")
        try:
            result = convert.convert(doc)
        except CliError as exc:
            raise CliError(f"{where}: {exc}") from None
        name = result.job["metadata"]["name"]
        for source, why in result.notes:
            print(f"{name}: not mapped: {source}: {why}", file=sys.stderr)
        for change in result.changes:
            print(f"{name}: note: {change}", file=sys.stderr)
        out.append(result.job)
    if args.output == "json":
        sys.stdout.write(
            render.dump(out[0] if len(out) == 1 else {"apiVersion": "v1", "kind": "List", "items": out}, "json")
        )
    else:
        sys.stdout.write("---\n".join(render.dump(job, "yaml") for job in out))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    if not args.output.lower().endswith(".png"):
        raise CliError(f"-o {args.output}: plot writes a PNG; give a file name ending in .png", code=USAGE)
    cluster, ns = _connect(args)
    body = cluster.job(ns, args.job)
    data = plot.points(body)
    plot.draw(data, f"{ns}/{args.job}: throughput and scaling efficiency", Path(args.output))
    sizes = ", ".join(str(p.world_size) for p in data)
    print(f"wrote {args.output}: {len(data)} world sizes ({sizes})", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    connection.add_argument("--context", help="kubeconfig context (default: the current one)")
    connection.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("-o", "--output", choices=render.FORMATS, help="print json or yaml instead of text")

    p = argparse.ArgumentParser(
        prog="kubectl phalanx",
        description="Look into phalanx TrainingJobs: status, logs, top, convert (from Kubeflow), plot.",
        epilog="Exit codes: 0 ok, 1 error (one line on stderr), 2 usage.",
    )
    p.add_argument("--version", action="version", version=f"kubectl-phalanx {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("status", parents=[connection, fmt], help="one job: state, restarts, waits, ranks, checkpoint")
    s.add_argument("job", metavar="JOB")
    s.set_defaults(run=run_status)

    lg = sub.add_parser("logs", parents=[connection], help="every rank's log, interleaved, rank-prefixed")
    lg.add_argument("job", metavar="JOB")
    lg.add_argument("-f", "--follow", action="store_true", help="stream, across gang restarts, until the job ends")
    lg.add_argument("--rank", type=_natural, help="only the pod that holds this global rank")
    lg.add_argument("--attempt", type=_positive, help="this gang attempt (default: the current one)")
    lg.add_argument("--timestamps", action="store_true", help="keep the kubelet's timestamp on each line")
    lg.set_defaults(run=run_logs)

    t = sub.add_parser("top", parents=[connection, fmt], help="jobs by samples/s, efficiency, goodput, GPUs")
    t.add_argument("-A", "--all-namespaces", action="store_true", help="jobs of every namespace")
    t.add_argument("--sort-by", choices=sorted(top.SORT_KEYS), default="samples", help="default: samples")
    t.set_defaults(run=run_top)

    c = sub.add_parser("convert", help="a Kubeflow PyTorchJob or TFJob YAML as a TrainingJob (stdout)")
    c.add_argument("file", metavar="FILE", help="YAML file, or - for stdin")
    c.add_argument("-o", "--output", choices=render.FORMATS, default="yaml", help="default: yaml")
    c.set_defaults(run=run_convert)

    pl = sub.add_parser("plot", parents=[connection], help="PNG of samples/s and efficiency per world size")
    pl.add_argument("job", metavar="JOB")
    pl.add_argument("-o", "--output", required=True, metavar="FILE.png", help="where to write the PNG")
    pl.set_defaults(run=run_plot)
    return p


def _natural(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a rank (0, 1, 2, ...)")
    return int(value)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not an attempt (1, 2, ...)")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # exits 2 with the usage on a bad command line
    try:
        code: int = args.run(args)
        return code
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away: not an error; keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: still one line, with what to report
        print(
            f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())} (a bug in kubectl-phalanx; "
            "please report it)",
            file=sys.stderr,
        )
        return ERROR
