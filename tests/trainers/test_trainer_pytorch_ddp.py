"""PyTorch DDP trainer as real processes (Gloo, CPU) with the env the operator sets."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import urllib.request
from pathlib import Path

import pytest

from phalanx_trainer.checkpoint.store import CheckpointStore
from tests.trainers.harness import (
    Job,
    base_env,
    done_line,
    free_port,
    progress_losses,
    spawn,
    start_torch_job,
    wait_for,
)

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.training

STEPS = 200
# Everything that decides the numbers; checkpoint cadence and --step-sleep must not change them.
MODEL_ARGS = ["--steps", str(STEPS), "--batch-size", "32", "--seed", "3", "--log-every", "20"]


def load_params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)  # type: ignore[no-any-return]


def assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs (max abs diff {(a[k] - b[k]).abs().max().item()})"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted 2-rank run that several tests compare against."""
    tmp = tmp_path_factory.mktemp("reference")
    ckpt = tmp / "ckpt"
    job = start_torch_job(
        tmp,
        2,
        [*MODEL_ARGS, "--checkpoint-every-steps", "50", "--out", str(tmp / "final.pt")],
        ckpt_dir=ckpt,
        name="ref",
    )
    try:
        job.wait_ok(timeout=120)
    finally:
        job.kill()
    return {"dir": tmp, "ckpt": ckpt, "final": tmp / "final.pt", "log": job.chief.log}


def test_two_ranks_train_loss_decreases_and_checkpoints(reference: dict[str, Path]) -> None:
    out = reference["log"].read_text()
    losses = progress_losses(out)
    assert len(losses) == STEPS // 20
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    done = done_line(out)
    assert (done["step"], done["world"], done["resumed_from"], done["checkpoint"]) == (
        f"{STEPS}/{STEPS}",
        "2",
        "-1",
        str(STEPS),
    )
    store = CheckpointStore(reference["ckpt"], keep=3)
    assert [c.step for c in store.committed()] == [100, 150, 200]  # every 50 + final, keep 3 (the default)
    latest = store.latest()
    assert latest is not None
    assert latest.meta["progress"]["step"] == STEPS and latest.meta["world_size"] == 2
    saved = torch.load(latest.file("model.pt"), weights_only=True)
    assert_bit_equal(saved, load_params(reference["final"]))


def test_sigkill_one_rank_then_restart_resumes_bit_identical(
    tmp_path: Path, reference: dict[str, Path], cleanup: list[Job]
) -> None:
    ckpt = tmp_path / "ckpt"
    store = CheckpointStore(ckpt, keep=3)
    first = start_torch_job(
        tmp_path, 2, [*MODEL_ARGS, "--checkpoint-every-steps", "20", "--step-sleep", "0.02"], ckpt_dir=ckpt
    )
    cleanup.append(first)
    wait_for(lambda: (c := store.latest()) is not None and c.step >= 60, 90, "a checkpoint at step >= 60")
    first.procs[1].signal(signal.SIGKILL)  # the rank dies mid-run
    first.procs[1].wait(10)
    # Its peer fails its next all-reduce; the operator would delete the gang anyway.
    with contextlib.suppress(AssertionError):
        first.procs[0].wait(15)
    first.kill()
    resume_step = store.latest().step  # type: ignore[union-attr]
    assert 60 <= resume_step < STEPS

    second = start_torch_job(
        tmp_path,
        2,
        [*MODEL_ARGS, "--checkpoint-every-steps", "20", "--out", str(tmp_path / "final.pt")],
        ckpt_dir=ckpt,
        attempt=2,
    )
    cleanup.append(second)
    second.wait_ok(timeout=120)
    out = second.chief.output()
    assert f"resumed from step {resume_step} (attempt 2, world size 2 -> 2)" in out
    assert done_line(out)["resumed_from"] == str(resume_step)
    assert_bit_equal(load_params(tmp_path / "final.pt"), load_params(reference["final"]))


def test_resume_with_fewer_then_more_ranks_keeps_the_model_state(
    tmp_path: Path, reference: dict[str, Path], cleanup: list[Job]
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference["ckpt"], ckpt)  # the 2-rank job's checkpoints, newest at step 200
    store = CheckpointStore(ckpt, keep=3)
    at_200 = torch.load(store.get(STEPS).file("model.pt"), weights_only=True)  # type: ignore[union-attr]

    # 2 -> 1
    dump1 = tmp_path / "resume1"
    args1 = [*MODEL_ARGS[:1], "260", *MODEL_ARGS[2:], "--dump-resume-state", str(dump1)]
    one = start_torch_job(tmp_path, 1, args1, ckpt_dir=ckpt, attempt=2, name="one")
    cleanup.append(one)
    one.wait_ok(timeout=120)
    assert "resumed from step 200 (attempt 2, world size 2 -> 1)" in one.chief.output()
    assert_bit_equal(load_params(dump1 / "rank0.pt"), at_200)
    at_260 = store.latest()
    assert at_260 is not None and at_260.step == 260 and at_260.meta["world_size"] == 1
    # Data position carried over: 60 more steps of 32 samples at one rank.
    assert at_260.meta["progress"]["samples_total"] == STEPS * 64 + 60 * 32

    # 1 -> 3
    dump3 = tmp_path / "resume3"
    args3 = [
        *MODEL_ARGS[:1],
        "280",
        *MODEL_ARGS[2:],
        "--dump-resume-state",
        str(dump3),
        "--out",
        str(tmp_path / "final.pt"),
    ]
    three = start_torch_job(tmp_path, 3, args3, ckpt_dir=ckpt, attempt=3, name="three")
    cleanup.append(three)
    three.wait_ok(timeout=120)
    assert "resumed from step 260 (attempt 3, world size 1 -> 3)" in three.chief.output()
    state_260 = torch.load(at_260.file("model.pt"), weights_only=True)
    for rank in range(3):
        assert_bit_equal(load_params(dump3 / f"rank{rank}.pt"), state_260)
    final = store.latest()
    assert final is not None and final.step == 280 and final.meta["world_size"] == 3
    assert final.meta["progress"]["samples_total"] == STEPS * 64 + 60 * 32 + 20 * 96


@pytest.mark.parametrize("launcher", ["runtime", "torchrun"])
def test_two_procs_in_one_pod_match_two_pods(
    tmp_path: Path, reference: dict[str, Path], cleanup: list[Job], launcher: str
) -> None:
    # One pod, two processes: the operator sets WORLD_SIZE, PHALANX_PROCS_PER_POD and PET_*, no
    # RANK. Either the runtime spawns the ranks itself or the container runs torchrun.
    port = str(free_port())
    env = base_env(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
        WORLD_SIZE="2",
        NODE_RANK="0",
        PHALANX_PROCS_PER_POD="2",
        PET_NPROC_PER_NODE="2",
        PET_NNODES="1",
        PET_NODE_RANK="0",
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=port,
        PHALANX_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
    )
    args = [*MODEL_ARGS, "--out", str(tmp_path / "final.pt")]
    if launcher == "runtime":
        module = "phalanx_trainer.examples.pytorch_ddp"
    else:  # torchrun reads the PET_* variables as its own options
        module, args = "torch.distributed.run", ["-m", "phalanx_trainer.examples.pytorch_ddp", *args]
    pod = Job([spawn(module, args, env, tmp_path / "pod.log")])
    cleanup.append(pod)
    pod.wait_ok(timeout=180)
    assert done_line(pod.chief.output())["world"] == "2"
    assert_bit_equal(load_params(tmp_path / "final.pt"), load_params(reference["final"]))


def test_sigterm_to_one_rank_saves_and_all_exit_143(tmp_path: Path, cleanup: list[Job]) -> None:
    ckpt = tmp_path / "ckpt"
    store = CheckpointStore(ckpt, keep=3)
    job = start_torch_job(
        tmp_path, 2, [*MODEL_ARGS[:1], "100000", *MODEL_ARGS[2:], "--step-sleep", "0.01"], ckpt_dir=ckpt
    )
    cleanup.append(job)
    wait_for(lambda: "step 40/" in job.chief.output(), 90, "training to reach step 40")
    assert store.latest() is None  # no periodic checkpoints configured: the save below is the SIGTERM one
    # A node drain evicts one pod: the ranks agree on a step, rank 0 saves, every rank exits 143.
    job.procs[1].signal(signal.SIGTERM)
    assert job.wait(timeout=60) == [143, 143]
    ckpt_saved = store.latest()
    assert ckpt_saved is not None and ckpt_saved.step >= 40
    assert f"preempted at step {ckpt_saved.step} (checkpoint saved)" in job.chief.output()


def test_metrics_endpoint_while_training(tmp_path: Path, cleanup: list[Job]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    args = [*MODEL_ARGS[:1], "100000", *MODEL_ARGS[2:], "--step-sleep", "0.01", "--checkpoint-every-steps", "25"]
    job = start_torch_job(tmp_path, 2, args, ckpt_dir=tmp_path / "ckpt", metrics_port=port)
    cleanup.append(job)

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}

    values: dict[str, float] = {}

    def has_progress() -> bool:
        nonlocal values
        try:
            values = scrape()
        except OSError:
            return False
        return (
            values.get("phalanx_trainer_steps_total", 0) >= 60
            and values.get("phalanx_trainer_last_checkpoint_step", -1) >= 25
        )

    wait_for(has_progress, 90, "60 steps and a checkpoint in the metrics", poll=0.2)
    v = values
    steps = v["phalanx_trainer_steps_total"]
    assert v["phalanx_trainer_samples_total"] == steps * 32  # one process per pod, batch 32
    assert v["phalanx_trainer_step_duration_seconds_count"] == steps
    mean_step = v["phalanx_trainer_step_duration_seconds_sum"] / steps
    assert 0.01 <= mean_step < 1.0  # --step-sleep 0.01 is a floor
    assert 0 < v["phalanx_trainer_samples_per_second"] <= 32 / 0.01 * 1.05
    assert 0 < v["phalanx_trainer_loss"] < 10
    assert (
        v["phalanx_trainer_world_size"],
        v["phalanx_trainer_rank"],
        v["phalanx_trainer_attempt"],
        v["phalanx_trainer_procs_per_pod"],
        v["phalanx_trainer_resumed_from_step"],
    ) == (2, 0, 1, 1, -1)
    assert v["phalanx_trainer_last_checkpoint_step"] % 25 == 0
    assert v["phalanx_trainer_last_checkpoint_timestamp_seconds"] > 1.7e9
    assert v["phalanx_trainer_checkpoint_save_duration_seconds_count"] >= 1
    # Live values, not a snapshot: the counter keeps moving.
    wait_for(lambda: scrape()["phalanx_trainer_steps_total"] > steps, 30, "the step counter to move", poll=0.1)
    job.kill()


@pytest.mark.parametrize(("slow_rank", "waits"), [(1, True), (0, False)], ids=["peer-slow", "self-slow"])
def test_collective_wait_tells_the_slow_rank_from_its_peers(
    tmp_path: Path, cleanup: list[Job], slow_rank: int, waits: bool
) -> None:
    """Rank 0 serves the metrics. When rank 1 sleeps 50 ms a step, rank 0's steps are as long (DDP
    lockstep) but spent mostly waiting in the all-reduce; when rank 0 is the slow one it hardly waits."""
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    args = [*MODEL_ARGS[:1], "100000", *MODEL_ARGS[2:], "--slow-rank", str(slow_rank), "--slow-sleep", "0.05"]
    job = start_torch_job(tmp_path, 2, args, ckpt_dir=None, metrics_port=port)
    cleanup.append(job)
    values: dict[str, float] = {}

    def enough_steps() -> bool:
        nonlocal values
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return False
        values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
        return values.get("phalanx_trainer_steps_total", 0) >= 40

    wait_for(enough_steps, 90, "40 steps in the metrics", poll=0.2)
    job.kill()
    waited = values["phalanx_trainer_collective_wait_seconds_total"]
    share = waited / values["phalanx_trainer_step_duration_seconds_sum"]
    assert (share > 0.5) is waits, values


def test_preflight_passes_and_reports_its_bandwidth(tmp_path: Path, cleanup: list[Job]) -> None:
    port = free_port()
    preflight = {"PHALANX_PREFLIGHT_PEERS": "localhost,127.0.0.1", "PHALANX_PREFLIGHT_ALLREDUCE_BYTES": str(2**22)}
    args = [*MODEL_ARGS[:1], "20", *MODEL_ARGS[2:]]
    job = start_torch_job(tmp_path, 2, args, ckpt_dir=None, metrics_port=port, env=preflight)
    cleanup.append(job)
    job.wait_ok(timeout=120)
    out = job.chief.output()
    m = re.search(
        r"^preflight passed in ([\d.]+)s: all-reduce of 4.0 MiB in [\d.]+ ms, bus bandwidth ([\d.]+) GB/s", out, re.M
    )
    assert m, out
    assert float(m.group(2)) > 0
    assert "done step 20/20" in out


def test_preflight_fails_fast_naming_the_peer_that_does_not_resolve(tmp_path: Path, cleanup: list[Job]) -> None:
    peers = "localhost,nosuch-worker-7.nowhere.invalid"
    preflight = {"PHALANX_PREFLIGHT_PEERS": peers, "PHALANX_PREFLIGHT_TIMEOUT_SECONDS": "3"}
    job = start_torch_job(tmp_path, 2, MODEL_ARGS, ckpt_dir=None, env=preflight)
    cleanup.append(job)
    assert job.wait(timeout=60) == [3, 3]  # contract.EXIT_PREFLIGHT_FAILED, before any step
    out = job.chief.output()
    assert "preflight failed: peer nosuch-worker-7.nowhere.invalid does not resolve after 3s" in out, out
    assert "step " not in out


def test_checkpoints_through_an_object_store_url(
    tmp_path: Path, reference: dict[str, Path], cleanup: list[Job]
) -> None:
    # fsspec's "local://" goes through the object-store code path (upload, marker, download).
    from phalanx_trainer.checkpoint.remote import RemoteCheckpointStore

    uri = f"local://{tmp_path}/bucket/run"
    first = start_torch_job(tmp_path, 2, [*MODEL_ARGS[:1], "120", *MODEL_ARGS[2:]], ckpt_dir=None, ckpt_uri=uri)
    cleanup.append(first)
    first.wait_ok(timeout=120)
    remote = RemoteCheckpointStore(uri, cache_dir=tmp_path / "cache")
    assert [c.step for c in remote.committed()] == [120]
    second = start_torch_job(
        tmp_path, 2, [*MODEL_ARGS, "--out", str(tmp_path / "final.pt")], ckpt_dir=None, ckpt_uri=uri, attempt=2
    )
    cleanup.append(second)
    second.wait_ok(timeout=120)
    assert "resumed from step 120 (attempt 2, world size 2 -> 2)" in second.chief.output()
    assert [c.step for c in remote.committed()] == [120, 200]
    assert_bit_equal(load_params(tmp_path / "final.pt"), load_params(reference["final"]))
