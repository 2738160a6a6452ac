"""The client process of every benchmark: `python -m bench.client MODE KUBECONFIG CONCURRENCY`.

It reads JSON commands on stdin and answers one JSON line per finished command on stdout, so the
bench process only observes (its pod watch) and never shares a GIL with the work it measures.

Two clients of CONCURRENCY connections/threads each:
- the *user* client submits and deletes jobs (for every mode);
- the *operator* client (mode baseline only) is the limit baseline: it creates the Service and the
  gated pods phalanx would create for the job, then lifts the gates, directly, with the same
  client-side concurrency as the operator (PHALANX_API_CONCURRENCY) and no QPS limiter.

Modes: phalanx (submit a TrainingJob; the operator does the rest), kubeflow (submit a PyTorchJob),
baseline (submit a TrainingJob, then do the operator's object work itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from bench import kube
from bench.watch import PodWatch
from bench.workloads import JobSpec, phalanx_objects, pytorch_job, training_job
from phalanx.controller.kube import api_error_message
from phalanx.core import names

T = TypeVar("T")
UNGATE = [{"op": "remove", "path": "/spec/schedulingGates"}]


class Client:
    def __init__(self, mode: str, kubeconfig: Path, concurrency: int) -> None:
        self.mode = mode
        self.user_api = kube.api_client(kubeconfig, concurrency)
        self.op_api = kube.api_client(kubeconfig, concurrency)
        self.user_pool = ThreadPoolExecutor(concurrency, thread_name_prefix="user")
        self.op_pool = ThreadPoolExecutor(concurrency, thread_name_prefix="op")
        self.wait_pool = ThreadPoolExecutor(4, thread_name_prefix="wait")
        self.user = kubernetes.client.CustomObjectsApi(self.user_api)
        self.core = kubernetes.client.CoreV1Api(self.op_api)
        self.out_lock = threading.Lock()

    async def _call(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kw))

    def emit(self, **fields: Any) -> None:
        with self.out_lock:
            sys.stdout.write(json.dumps({**fields, "t": time.monotonic()}) + "\n")
            sys.stdout.flush()

    # --- commands --------------------------------------------------------------------------------
    async def handle(self, cmd: dict[str, Any]) -> None:
        op = cmd["op"]
        try:
            if op == "submit":
                await self.submit(cmd["ns"], JobSpec.from_json(cmd["job"]))
            elif op == "delete":
                await self.delete(cmd["ns"], cmd["name"])
            elif op == "recover":
                await self.recover(cmd["ns"], JobSpec.from_json(cmd["job"]), float(cmd.get("timeout", 600)))
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            self.emit(op=op, id=cmd.get("id"), error=f"{type(exc).__name__}: {api_error_message(exc)}")
            return
        self.emit(op=op, id=cmd.get("id"), error=None)

    async def submit(self, ns: str, job: JobSpec) -> None:
        group, version, plural = kube.PTJ if self.mode == "kubeflow" else kube.TJ
        manifest = pytorch_job(ns, job) if self.mode == "kubeflow" else training_job(ns, job)
        resp = await self._call(
            self.user_pool,
            self.user.create_namespaced_custom_object,
            group,
            version,
            ns,
            plural,
            manifest,
            _preload_content=False,
        )
        if self.mode == "baseline":
            await self.start_gang(kube.raw(resp), attempt=1, with_service=True)

    async def start_gang(
        self, body: dict[str, Any], attempt: int, with_service: bool, only: set[str] | None = None
    ) -> None:
        """What phalanx's reconcile + gang admission do to the API for one gang, minus status and Events:
        create the Service and the gated pods concurrently, then lift every gate concurrently.
        only: create just these pods (re-creating pods that vanished)."""
        ns = body["metadata"]["namespace"]
        service, pods = phalanx_objects(body, attempt)
        if only is not None:
            pods = [p for p in pods if p["metadata"]["name"] in only]
        creates = [self._call(self.op_pool, self._create_pod, ns, p) for p in pods]
        if with_service:
            creates.append(
                self._call(self.op_pool, self.core.create_namespaced_service, ns, service, _preload_content=False)
            )
        await asyncio.gather(*creates)
        gated = [p["metadata"]["name"] for p in pods if p["spec"].get("schedulingGates")]
        await asyncio.gather(*(self._call(self.op_pool, self._ungate, ns, name) for name in gated))

    def _create_pod(self, ns: str, pod: dict[str, Any]) -> None:
        """A name still held by a pod of the old attempt (its deletion not final yet) is retried, as the
        operator's requeue does."""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.core.create_namespaced_pod(ns, pod, _preload_content=False)
                return
            except ApiException as exc:
                if exc.status != 409 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _ungate(self, ns: str, name: str) -> None:
        try:
            self.core.patch_namespaced_pod(name, ns, UNGATE, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:  # vanished (see recover): re-created by the caller
                raise

    def _delete_pod(self, ns: str, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, ns, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:  # already gone: what the operator's delete_pod accepts too
                raise

    async def delete(self, ns: str, name: str) -> None:
        group, version, plural = kube.PTJ if self.mode == "kubeflow" else kube.TJ
        try:
            await self._call(
                self.user_pool,
                self.user.delete_namespaced_custom_object,
                group,
                version,
                ns,
                plural,
                name,
                propagation_policy="Background",
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def recover(self, ns: str, job: JobSpec, limit: float) -> None:
        """Baseline only: the minimal gang restart. Watch the job's pods; when one of attempt 1 fails,
        delete the whole gang, wait until it is gone (ranks never mix attempts), create attempt 2's
        gated pods and lift the gates."""
        if self.mode != "baseline":
            raise ValueError("recover is the baseline's own restart; operators recover by themselves")
        group, version, plural = kube.TJ
        resp = await self._call(
            self.user_pool, self.user.get_namespaced_custom_object, group, version, ns, plural, job.name,
            _preload_content=False,
        )  # fmt: skip
        body = kube.raw(resp)
        watch = PodWatch(self.op_api, ns, names.LABEL_JOB)
        await self._call(self.wait_pool, watch.start)
        try:

            def failed(pods: dict[str, Any]) -> list[str]:
                mine = [p for p in pods.values() if p.job == job.name and p.attempt == 1]
                return [p.name for p in mine] if any(p.failed is not None for p in mine) else []

            gang = await self._call(self.wait_pool, watch.wait, failed, limit, "a failed pod")
            await asyncio.gather(*(self._call(self.op_pool, self._delete_pod, ns, n) for n in gang))

            def gone(pods: dict[str, Any]) -> bool:
                return all(p.deleted is not None for p in pods.values() if p.job == job.name and p.attempt == 1)

            await self._call(self.wait_pool, watch.wait, gone, limit, "the old gang to be gone")
            await self.start_gang(body, attempt=2, with_service=False)
            # kwok finalizes an old pod's deletion by name, so it can delete the new pod of the same name
            # created right after (the operator's level-based reconcile re-creates it; so does this).
            deadline = time.monotonic() + limit
            while True:

                def settled(pods: dict[str, Any]) -> tuple[str, set[str]] | None:
                    new = [p for p in pods.values() if p.job == job.name and p.attempt == 2]
                    live = {p.name for p in new if p.deleted is None}
                    if len(live) >= job.workers and all(p.running for p in new if p.deleted is None):
                        return ("done", set())
                    lost = {p.name for p in new if p.deleted is not None} - live
                    return ("lost", lost) if lost else None

                what, lost = await self._call(
                    self.wait_pool, watch.wait, settled, max(deadline - time.monotonic(), 1), "attempt 2 Running"
                )
                if what == "done":
                    break
                await self.start_gang(body, attempt=2, with_service=False, only=lost)
        finally:
            watch.stop()


async def serve(client: Client) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed after "quit"
            for line in sys.stdin:
                if line.strip():
                    loop.call_soon_threadsafe(queue.put_nowait, json.loads(line))
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    tasks: set[asyncio.Task[None]] = set()
    client.emit(op="ready", id=None, error=None)
    while (cmd := await queue.get()) is not None and cmd.get("op") != "quit":
        task = asyncio.create_task(client.handle(cmd))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


def main(argv: list[str]) -> int:
    mode, kubeconfig, concurrency = argv[0], Path(argv[1]), int(argv[2])
    if mode not in ("phalanx", "baseline", "kubeflow"):
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    asyncio.run(serve(Client(mode, kubeconfig, concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
