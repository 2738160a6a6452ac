"""TensorFlow MultiWorkerMirroredStrategy trainer: 2 workers on 127.0.0.1 from TF_CONFIG."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from phalanx_trainer.checkpoint.store import CheckpointStore
from tests.trainers.harness import Job, done_line, progress_losses, start_tf_job, wait_for

np = pytest.importorskip("numpy")
pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")

pytestmark = pytest.mark.training

STEPS = 120
FIT_ARGS = [
    "--mode",
    "fit",
    "--steps",
    str(STEPS),
    "--batch-size",
    "32",
    "--seed",
    "5",
    "--log-every",
    "20",
    "--steps-per-epoch",
    "50",
    "--control-every",
    "5",
]


def load_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files, key=lambda n: int(n.split("_")[1]))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tf-reference")
    job = start_tf_job(
        tmp,
        2,
        [*FIT_ARGS, "--checkpoint-every-steps", "40", "--out", str(tmp / "final.npz")],
        ckpt_dir=tmp / "ckpt",
        name="ref",
    )
    try:
        job.wait_ok(timeout=180)
    finally:
        job.kill()
    return {"ckpt": tmp / "ckpt", "final": tmp / "final.npz", "log": job.chief.log, "worker_log": job.procs[1].log}


def test_two_workers_fit_train_and_the_chief_checkpoints(reference: dict[str, Path]) -> None:
    out = reference["log"].read_text()
    losses = progress_losses(out)
    assert len(losses) == STEPS // 20 and losses[-1] < 0.8 * losses[0], losses
    done = done_line(out)
    assert (done["step"], done["world"], done["checkpoint"]) == (f"{STEPS}/{STEPS}", "2", str(STEPS))
    assert "done " not in reference["worker_log"].read_text()  # only the chief reports
    store = CheckpointStore(reference["ckpt"])
    assert [c.step for c in store.committed()] == [40, 80, 120]
    latest = store.latest()
    assert latest is not None and latest.meta["framework"] == "tensorflow" and latest.meta["world_size"] == 2
    assert sorted(latest.files) == ["ckpt.data-00000-of-00001", "ckpt.index"]
    # The non-chief's scratch copies never land in the shared directory.
    assert sorted(p.name for p in reference["ckpt"].iterdir()) == [c.path.name for c in store.committed()]


def test_kill_a_worker_then_restart_resumes_to_the_same_weights(
    tmp_path: Path, reference: dict[str, Path], cleanup: list[Job]
) -> None:
    ckpt = tmp_path / "ckpt"
    store = CheckpointStore(ckpt)
    first = start_tf_job(
        tmp_path, 2, [*FIT_ARGS, "--checkpoint-every-steps", "20", "--step-sleep", "0.03"], ckpt_dir=ckpt
    )
    cleanup.append(first)
    wait_for(lambda: (c := store.latest()) is not None and c.step >= 40, 120, "a checkpoint at step >= 40")
    first.procs[1].signal(signal.SIGKILL)
    first.procs[1].wait(10)
    first.kill()  # the chief would block in its next collective; the operator deletes the gang
    resume_step = store.latest().step  # type: ignore[union-attr]
    assert 40 <= resume_step < STEPS

    second = start_tf_job(
        tmp_path,
        2,
        [*FIT_ARGS, "--checkpoint-every-steps", "20", "--out", str(tmp_path / "final.npz")],
        ckpt_dir=ckpt,
        attempt=2,
    )
    cleanup.append(second)
    second.wait_ok(timeout=180)
    out = second.chief.output()
    assert f"resumed from step {resume_step} (attempt 2, workers 2 -> 2)" in out
    assert done_line(out)["resumed_from"] == str(resume_step)
    # Same seed, same data stream position, restored optimizer: the uninterrupted run's weights.
    for got, want in zip(load_weights(tmp_path / "final.npz"), load_weights(reference["final"]), strict=True):
        assert np.array_equal(got, want)


def test_custom_loop_sigterm_saves_exits_143_and_resumes(tmp_path: Path, cleanup: list[Job]) -> None:
    ckpt = tmp_path / "ckpt"
    store = CheckpointStore(ckpt)
    args = ["--mode", "custom", "--batch-size", "32", "--seed", "5", "--log-every", "20"]
    job = start_tf_job(tmp_path, 2, [*args, "--steps", "100000", "--step-sleep", "0.02"], ckpt_dir=ckpt)
    cleanup.append(job)
    wait_for(lambda: "step 40/" in job.chief.output(), 120, "training to reach step 40")
    job.procs[1].signal(signal.SIGTERM)  # only the non-chief is told; the vote stops both
    assert job.wait(timeout=60) == [143, 143]
    saved = store.latest()
    assert saved is not None and saved.step >= 40 and saved.meta["mode"] == "custom"

    resumed = start_tf_job(tmp_path, 2, [*args, "--steps", str(saved.step + 20)], ckpt_dir=ckpt, attempt=2)
    cleanup.append(resumed)
    resumed.wait_ok(timeout=180)
    out = resumed.chief.output()
    assert f"resumed from step {saved.step} (attempt 2" in out
    assert done_line(out)["step"] == f"{saved.step + 20}/{saved.step + 20}"
