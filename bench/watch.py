"""A pod watch on one namespace that stamps, per pod, when it was first seen created, bound to a node,
Running, Failed and deleted (time.monotonic(), comparable across processes on this machine).

The stream is read raw (no model deserialisation) so the observer stays cheap next to what it observes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

ATTEMPT_LABEL = "phalanx.dev/attempt"


@dataclass
class PodRecord:
    uid: str
    name: str
    job: str
    attempt: int
    created: float
    bound: float | None = None
    running: float | None = None
    failed: float | None = None
    succeeded: float | None = None
    deleted: float | None = None
    node: str | None = None
    phase: str = "Pending"

    @property
    def live(self) -> bool:
        return self.deleted is None and self.phase not in ("Failed", "Succeeded")


class PodWatch:
    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, job_label: str) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.ns = namespace
        self.job_label = job_label
        self.pods: dict[str, PodRecord] = {}
        self.events = 0
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._rv = ""
        self._thread = threading.Thread(target=self._run, name=f"watch-{namespace}", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> PodWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        listed = self.core.list_namespaced_pod(self.ns, _preload_content=False)
        body = json.loads(listed.data)
        now = time.monotonic()
        for item in body.get("items") or []:
            self._apply("ADDED", item, now)
        self._rv = body["metadata"]["resourceVersion"]
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._stream()
            except ApiException as exc:
                if exc.status == 410:  # compacted: relist (rare; our windows are minutes)
                    listed = json.loads(self.core.list_namespaced_pod(self.ns, _preload_content=False).data)
                    now = time.monotonic()
                    for item in listed.get("items") or []:
                        self._apply("MODIFIED", item, now)
                    self._rv = listed["metadata"]["resourceVersion"]
                else:
                    self.error = exc
                    time.sleep(0.5)
            except Exception:  # read timeouts and dropped connections: resume from the last version
                time.sleep(0.05)

    def _stream(self) -> None:
        resp = self.core.list_namespaced_pod(
            self.ns,
            watch=True,
            resource_version=self._rv,
            allow_watch_bookmarks=True,
            timeout_seconds=300,
            _preload_content=False,
            _request_timeout=(10, 2),
        )
        buf = b""
        try:
            for chunk in resp.stream(65536):
                now = time.monotonic()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":
                            raise ApiException(status=ev["object"].get("code", 500), reason=str(ev["object"]))
                        self._rv = ev["object"]["metadata"]["resourceVersion"]
                        if ev["type"] != "BOOKMARK":
                            self._apply(ev["type"], ev["object"], now)
                if self._stop.is_set():
                    return
        finally:
            resp.release_conn()

    def _apply(self, type_: str, pod: dict[str, Any], now: float) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        labels = meta.get("labels") or {}
        with self.cond:
            self.events += 1
            rec = self.pods.get(meta["uid"])
            if rec is None:
                rec = PodRecord(
                    uid=meta["uid"],
                    name=meta["name"],
                    job=labels.get(self.job_label, ""),
                    attempt=int(labels.get(ATTEMPT_LABEL, "0") or 0),
                    created=now,
                )
                self.pods[rec.uid] = rec
            if spec.get("nodeName") and rec.bound is None:
                rec.bound, rec.node = now, spec["nodeName"]
            phase = status.get("phase") or "Pending"
            rec.phase = phase
            if phase == "Running" and rec.running is None:
                rec.running = now
            elif phase == "Failed" and rec.failed is None:
                rec.failed = now
            elif phase == "Succeeded" and rec.succeeded is None:
                rec.succeeded = now
            if type_ == "DELETED" and rec.deleted is None:
                rec.deleted = now
            self.cond.notify_all()

    def wait(self, predicate: Callable[[dict[str, PodRecord]], Any], timeout: float, what: str) -> Any:
        """Block until predicate(pods) is truthy (evaluated under the lock after each event); returns it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate(self.pods)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} in {self.ns}")
                self.cond.wait(min(left, 1.0))

    def snapshot(self) -> list[PodRecord]:
        with self.cond:
            return [PodRecord(**vars(r)) for r in self.pods.values()]


def by_job(pods: dict[str, PodRecord] | list[PodRecord]) -> dict[str, list[PodRecord]]:
    out: dict[str, list[PodRecord]] = {}
    for r in pods.values() if isinstance(pods, dict) else pods:
        out.setdefault(r.job, []).append(r)
    return out


def gang_running_at(pods: list[PodRecord], workers: int, since: float = 0.0, whole_gang: bool = True) -> float | None:
    """When the job's current gang was all Running: `workers` pods neither failed nor deleted, each seen
    Running (it may have succeeded since). With `since`: whole_gang needs all of them created after it
    (a gang restart), otherwise at least one (a single replaced pod)."""
    live = [p for p in pods if p.failed is None and p.deleted is None]
    if since and whole_gang:
        live = [p for p in live if p.created >= since]
    if len(live) < workers or any(p.running is None for p in live):
        return None
    if since and not whole_gang and not any(p.created >= since for p in live):
        return None
    return max(p.running for p in live if p.running is not None)


def max_time(pods: list[PodRecord], attr: str) -> float | None:
    """The latest `attr` stamp (created, bound, running) over the pods, None if any lacks it."""
    values = [getattr(p, attr) for p in pods]
    return None if not values or any(v is None for v in values) else max(values)
