"""`kubectl phalanx logs JOB [-f] [--rank N] [--attempt N]`: every rank's trainer log, interleaved,
each line prefixed with its rank; with -f it follows the job across gang restarts until it ends.

Without -f the pods' lines are merged by the kubelet's timestamps when it gives them (a kubelet
always does; a node that does not gets its pods printed one after another, in rank order). With
-f lines are printed as they arrive, and the pods of each new attempt are picked up as they start.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from phalanx.cli.cluster import Body, Cluster
from phalanx.cli.errors import CliError
from phalanx.cli.status import restart_history
from phalanx.core.model import JobView, PodView
from phalanx.core.observe import job_view, parse_time, pod_view

TERMINAL = ("Succeeded", "Failed")
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Line:
    prefix: str
    text: str
    stamp: datetime | None = None


def ranks_of(pod: PodView, procs_per_pod: int) -> str:
    first = pod.index * procs_per_pod
    return f"rank {first}" if procs_per_pod == 1 else f"ranks {first}-{first + procs_per_pod - 1}"


def split_stamp(raw: str) -> tuple[datetime | None, str]:
    """A kubelet `timestamps=true` line: 'RFC3339Nano text'. (None, raw) when it carries none."""
    head, _, rest = raw.partition(" ")
    if len(head) < 20 or head[4:5] != "-" or "T" not in head:
        return None, raw
    try:
        # Python parses at most microseconds: cut the nanoseconds.
        date, _, frac = head.rstrip("Z").partition(".")
        stamp = parse_time(f"{date}.{frac[:6]}Z" if frac else f"{date}Z")
    except ValueError:
        return None, raw
    return stamp, rest


def interleave(per_pod: Sequence[Sequence[Line]]) -> list[Line]:
    """All pods' lines in time order (stable: rank order breaks ties), or rank by rank without stamps."""
    every = [line for lines in per_pod for line in lines]
    if every and all(line.stamp is not None for line in every):
        return sorted(every, key=lambda line: line.stamp)  # type: ignore[arg-type,return-value]
    return every


def choose_pods(job: JobView, pods: Iterable[PodView], attempt: int, rank: int | None) -> list[PodView]:
    procs = job.spec.effective_procs_per_pod() if job.spec else 1
    chosen = sorted((p for p in pods if p.attempt == attempt), key=lambda p: p.index)
    if rank is not None:
        world = job.status.world_size or (job.spec.world_size() if job.spec else 0)
        if world and not 0 <= rank < world:
            raise CliError(f"--rank {rank}: job {job.name} has ranks 0..{world - 1}")
        chosen = [p for p in chosen if p.index == rank // procs]
    return chosen


def _no_pods(job: JobView, attempt: int, rank: int | None) -> CliError:
    who = f"rank {rank} of attempt {attempt}" if rank is not None else f"attempt {attempt}"
    if attempt > job.status.attempt or attempt < 1:
        return CliError(f"job {job.name} has attempts 1..{job.status.attempt}; there is no attempt {attempt}")
    if attempt < job.status.attempt:
        return CliError(
            f"no pod of {who} of job {job.name} exists any more: the operator deletes a gang's pods when it "
            f"starts the next attempt (the current one is {job.status.attempt})"
        )
    return CliError(f"job {job.name} has no pod of {who} yet (state {job.status.state or 'Pending'})")


def print_logs(
    cluster: Cluster, namespace: str, name: str, rank: int | None, attempt: int | None, timestamps: bool, out: TextIO
) -> None:
    job = job_view(cluster.job(namespace, name))
    wanted = attempt if attempt is not None else job.status.attempt
    pods = choose_pods(job, (pod_view(p) for p in cluster.pods(namespace, name)), wanted, rank)
    if not pods:
        raise _no_pods(job, wanted, rank)
    procs = job.spec.effective_procs_per_pod() if job.spec else 1
    per_pod = []
    for pod in pods:
        prefix = f"[{ranks_of(pod, procs)}]"
        lines = []
        if pod.phase != "Pending":
            for raw in cluster.log_lines(namespace, pod.name, follow=False, timestamps=True):
                stamp, text = split_stamp(raw)
                lines.append(Line(prefix, raw if timestamps else text, stamp))
        per_pod.append(lines)
    for line in interleave(per_pod):
        out.write(f"{line.prefix} {line.text}\n")


class _Follower:
    """One thread per pod stream, all feeding one queue that the main thread prints from."""

    def __init__(self, cluster: Cluster, namespace: str, timestamps: bool) -> None:
        self.cluster, self.namespace, self.timestamps = cluster, namespace, timestamps
        self.lines: queue.Queue[Line | None] = queue.Queue()
        self.started: set[str] = set()  # pod names (a name is reused by the next attempt, so name+attempt)
        self.live = 0
        self.errors: list[str] = []

    def start(self, pod: PodView, prefix: str) -> None:
        key = f"{pod.name}@{pod.attempt}"
        if key in self.started or pod.phase == "Pending":
            return
        self.started.add(key)
        self.live += 1
        threading.Thread(target=self._stream, args=(pod.name, prefix), daemon=True, name=f"logs-{pod.name}").start()

    def _stream(self, pod: str, prefix: str) -> None:
        try:
            for raw in self.cluster.log_lines(self.namespace, pod, follow=True, timestamps=self.timestamps):
                self.lines.put(Line(prefix, raw))
        except CliError as exc:
            self.errors.append(str(exc))
        except Exception as exc:  # one stream's surprise must not kill the others with a thread traceback
            self.errors.append(f"logs of pod {pod}: {type(exc).__name__}: {' '.join(str(exc).split())}")
        finally:
            self.lines.put(None)  # this stream ended

    def drain(self, out: TextIO, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.0)) if left > 0 else self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self.live -= 1
            else:
                out.write(f"{line.prefix} {line.text}\n")
                out.flush()


def _cause(cluster: Cluster, namespace: str, body: Body, attempt: int) -> str:
    """' (GangRestart: <message>)' for the marker line of a new attempt, from the job's Events."""
    history = restart_history(cluster.events(namespace, body), job_view(body).status, datetime.now(UTC))
    found = next((h for h in reversed(history) if h["attempt"] == attempt), None)
    return f" ({found['reason']}: {found['message']})" if found else ""


def follow_logs(
    cluster: Cluster,
    namespace: str,
    name: str,
    rank: int | None,
    attempt: int | None,
    timestamps: bool,
    out: TextIO,
    poll: float = POLL_SECONDS,
    read_job: Callable[[], Body] | None = None,
) -> None:
    """Stream the chosen attempt (default: the current one, then each next one) until the job ends."""
    read = read_job or (lambda: cluster.job(namespace, name))
    follower = _Follower(cluster, namespace, timestamps)
    body = read()
    job = job_view(body)
    following = attempt if attempt is not None else job.status.attempt
    if attempt is not None and not 1 <= attempt <= max(job.status.attempt, 1):
        raise _no_pods(job, attempt, rank)
    announced = following
    cause = ""
    last_look = False
    while True:
        procs = job.spec.effective_procs_per_pod() if job.spec else 1
        pods = choose_pods(job, (pod_view(p) for p in cluster.pods(namespace, name)), following, rank)
        if attempt is not None and attempt < job.status.attempt and not pods and not follower.started:
            raise _no_pods(job, attempt, rank)
        fresh = [p for p in pods if f"{p.name}@{p.attempt}" not in follower.started and p.phase != "Pending"]
        if fresh and following != announced:
            follower.drain(out, 0)  # the old attempt's last lines before the marker
            cause = cause or _cause(cluster, namespace, body, following)  # the Event may trail the status
            out.write(f"--- attempt {following}{cause} ---\n")
            out.flush()
            announced = following
        for pod in fresh:
            follower.start(pod, f"[{ranks_of(pod, procs)}]")
        follower.drain(out, poll)
        try:
            body = read()
            job = job_view(body)
        except CliError as exc:
            if "not found" in str(exc):
                follower.drain(out, 0)
                raise CliError(f"job {namespace}/{name} was deleted") from None
            raise
        if attempt is None and job.status.attempt > following:
            following = job.status.attempt  # the gang restarted: the old streams end on their own
            cause = _cause(cluster, namespace, body, following)
        over = (job.status.state or "") in TERMINAL or (attempt is not None and job.status.attempt > attempt)
        if over and follower.live == 0:
            if last_look:  # one more round picks up pods that started and ended between two polls
                break
            last_look = True
    follower.drain(out, 0)
    for error in follower.errors:
        print(f"warning: {error}", file=sys.stderr)
