"""A DDP training loop around a user model: resume, deterministic data order, checkpoints,
metrics, and the SIGTERM save-and-exit.

Determinism contract (what makes a killed-and-resumed run bit-identical to an uninterrupted one
with the same world size and seed):
 * data order comes from `ResumableDistributedSampler` (seeded by seed + epoch) and the progress
   saved with each checkpoint (epoch, samples of the epoch already consumed by the whole job);
 * the global RNG (dropout and other in-model randomness) is reseeded before every step from
   (seed, step, rank), so it needs no saving and is the same after a resume;
 * model and optimizer state are saved in full by rank 0 (DDP keeps them replicated).
With a different world size the state and the data position carry over (no sample of the epoch is
repeated or skipped), but the numbers differ from a run at the old size, as they must.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from phalanx_trainer.checkpoint import torch_io
from phalanx_trainer.checkpoint.store import Checkpoint
from phalanx_trainer.errors import Preempted
from phalanx_trainer.pytorch.collectives import AllReduceClock
from phalanx_trainer.pytorch.distributed import DistContext
from phalanx_trainer.pytorch.sampler import ResumableDistributedSampler
from phalanx_trainer.schedule import SaveSchedule

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
TRAINER_FILE = "trainer.pt"

LossFn = Callable[[Any, Any], torch.Tensor]  # (model output, target) -> scalar loss
StepFn = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch on device) -> scalar loss
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # total optimizer steps of the job (a resumed run continues towards it)
    batch_size: int  # per process
    seed: int = 0
    shuffle: bool = True
    checkpoint_every_steps: int | None = None
    # None: take PHALANX_CHECKPOINT_INTERVAL_SECONDS from the contract (which may also be unset).
    checkpoint_interval_seconds: float | None = None
    save_at_end: bool = True
    log_every: int = 50  # progress line and loss gauge (reading the loss syncs a GPU; not every step)
    step_sleep: float = 0.0  # demo only: slow each step down
    num_workers: int = 0
    reseed_every_step: bool = True
    # Steps between preemption votes. A vote is an async all-reduce overlapped with the next step,
    # but launching one costs ~0.1-1 ms of CPU on a Gloo group, so not every step; a SIGTERM stops
    # the job within 2 * stop_check_every steps.
    stop_check_every: int = 10
    print_progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.log_every < 1 or self.stop_check_every < 1:
            raise ValueError("steps >= 0, batch_size >= 1, log_every >= 1 and stop_check_every >= 1 are required")


@dataclass
class Progress:
    """Where training is; saved in the checkpoint marker's meta."""

    step: int = 0  # optimizer steps completed
    epoch: int = 0
    consumed_in_epoch: int = 0  # samples of this epoch used by all ranks together
    samples_total: int = 0  # samples used by all ranks since step 0

    def to_meta(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Progress:
        p = meta["progress"]
        return cls(
            step=int(p["step"]),
            epoch=int(p["epoch"]),
            consumed_in_epoch=int(p["consumed_in_epoch"]),
            samples_total=int(p["samples_total"]),
        )


@dataclass(frozen=True)
class TrainResult:
    step: int
    resumed_from: int | None
    loss: float
    samples_total: int
    elapsed_s: float  # the whole call, set-up (optimizer creation imports a lot of torch) included
    loop_s: float  # from the first step of this run to the last
    loop_cpu_s: float  # CPU time of the whole process (all threads) over the same span
    last_checkpoint_step: int | None


def reseed(seed: int, device: torch.device) -> None:
    """Seed the generators this step can use. Not torch.manual_seed: on a CUDA build without an
    initialised GPU it queues a lazy CUDA seeding with a captured stack trace, about 1 ms a call."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # CUDA is initialised by now: a direct call on this device


def step_seed(seed: int, step: int, rank: int) -> int:
    # A fixed mix (no Python hash(): it is salted per process for str, and we want stability).
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


class StopVote:
    """Agree across ranks on the step at which to stop for a preemption.

    Every `every` steps each rank contributes its local SIGTERM flag to an asynchronous MAX
    all-reduce on the control group and reads the previous vote's result, which completed while
    the step ran; so the vote costs no waiting, and all ranks stop after the same step (a rank that
    stopped alone would leave its peers blocked in the next gradient all-reduce).
    """

    def __init__(self, group: Any, world_size: int, every: int) -> None:
        self.group = group
        self.world_size = world_size
        self.every = every
        self._work: Any = None
        self._buf: torch.Tensor | None = None

    def poll(self, step: int, local_flag: bool) -> bool:
        if self.world_size == 1:
            return local_flag
        if step % self.every:
            return False
        if self._work is not None:
            assert self._buf is not None
            self._work.wait()
            if self._buf.item() > 0:
                self._work = None
                return True
        self._buf = torch.tensor([1 if local_flag else 0], dtype=torch.int32)
        self._work = dist.all_reduce(self._buf, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return False

    def drain(self) -> None:
        if self._work is not None:
            self._work.wait()
            self._work = None


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return (
            type(batch)(_to_device(b, device) for b in batch)
            if isinstance(batch, tuple)
            else [_to_device(b, device) for b in batch]
        )
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _default_step_fn(loss_fn: LossFn) -> StepFn:
    def step(model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, target = batch
        return loss_fn(model(inputs), target)

    return step


def _agree_on_resume_step(ctx: DistContext) -> int | None:
    """Rank 0 picks the newest committed checkpoint; everyone gets its step."""
    local = ctx.store.latest() if ctx.store is not None and ctx.is_writer else None
    if ctx.world_size == 1:
        return local.step if local else None
    box = [local.step if local else -1]
    dist.broadcast_object_list(box, src=0, group=ctx.control_group)
    return None if box[0] < 0 else int(box[0])


def _load_state(ctx: DistContext, step: int) -> tuple[Checkpoint | None, dict[str, Any]]:
    """Load checkpoint `step`: from the shared directory when every rank sees it, else from rank 0."""
    ckpt = ctx.store.get(step) if ctx.store is not None else None
    if ctx.world_size > 1:
        have = torch.tensor([1 if ckpt is not None else 0], dtype=torch.int32)
        dist.all_reduce(have, op=dist.ReduceOp.MIN, group=ctx.control_group)
        if have.item() == 0:
            # The directory is not shared between pods (e.g. a per-pod volume): rank 0 sends it.
            state = None
            if ctx.is_writer:
                assert ckpt is not None
                state = {
                    "meta": dict(ckpt.meta),
                    "model": torch_io.load_object(ckpt, MODEL_FILE),
                    "trainer": torch_io.load_object(ckpt, TRAINER_FILE),
                }
            box = [state]
            dist.broadcast_object_list(box, src=0, group=ctx.control_group)
            assert box[0] is not None
            return ckpt, box[0]
    if ckpt is None:
        raise RuntimeError(f"checkpoint step {step} vanished from {ctx.store}")
    return ckpt, {
        "meta": dict(ckpt.meta),
        "model": torch_io.load_object(ckpt, MODEL_FILE),
        "trainer": torch_io.load_object(ckpt, TRAINER_FILE),
    }


def train(
    ctx: DistContext,
    model: nn.Module,
    dataset: Dataset[Any],
    loss_fn: LossFn | None,
    make_optimizer: OptimizerFactory,
    config: TrainConfig,
    *,
    step_fn: StepFn | None = None,
    make_scheduler: SchedulerFactory | None = None,
    on_resume: Callable[[nn.Module, Progress], None] | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train `model` with DDP for `config.steps` steps, resuming from the newest committed checkpoint.

    Batches are `(inputs, target)` and the loss is `loss_fn(model(inputs), target)`, unless
    `step_fn(model, batch)` is given. Build the model identically on every rank (seed first);
    rank 0's weights win anyway (DDP broadcasts them). Raises `Preempted` after a SIGTERM, once
    the agreed step's checkpoint is committed.
    """
    if step_fn is None:
        if loss_fn is None:
            raise ValueError("pass loss_fn or step_fn")
        step_fn = _default_step_fn(loss_fn)
    started = time.perf_counter()
    rank, world = ctx.rank, ctx.world_size
    metrics, store = ctx.metrics, ctx.store
    model.to(ctx.device)
    optimizer = make_optimizer(model.parameters())
    scheduler = make_scheduler(optimizer) if make_scheduler is not None else None

    if store is not None and ctx.is_writer:
        store.cleanup_incomplete()
    progress = Progress()
    resumed_from = _agree_on_resume_step(ctx)
    if resumed_from is not None:
        ckpt, state = _load_state(ctx, resumed_from)
        if ckpt is not None and ctx.is_writer:
            metrics.set_last_checkpoint(ckpt.step, ckpt.created)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["trainer"]["optimizer"])
        if scheduler is not None and state["trainer"].get("scheduler") is not None:
            scheduler.load_state_dict(state["trainer"]["scheduler"])
        progress = Progress.from_meta(state["meta"])
        if on_resume is not None:
            on_resume(model, progress)
        if rank == 0 and config.print_progress:
            old_world = state["meta"].get("world_size")
            print(
                f"resumed from step {progress.step} (attempt {ctx.job.attempt}, world size {old_world} -> {world})",
                flush=True,
            )
    metrics.set_resumed_from(resumed_from)

    ddp: nn.Module = model
    clock: AllReduceClock | None = None
    if world > 1:
        ddp = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        clock = AllReduceClock()
        clock.attach(model)

    interval = config.checkpoint_interval_seconds or ctx.job.checkpoint_interval_seconds
    schedule = SaveSchedule(every_steps=config.checkpoint_every_steps, interval_seconds=interval)
    if store is None and (schedule.enabled or config.save_at_end) and rank == 0:
        log.warning("no checkpoint directory (PHALANX_CHECKPOINT_DIR unset): not saving checkpoints")
    last_saved: int | None = resumed_from

    def save() -> None:
        nonlocal last_saved
        if store is None or not ctx.is_writer or last_saved == progress.step:
            return
        t0 = time.perf_counter()
        with store.begin(progress.step) as writer:
            torch_io.save_object(writer, MODEL_FILE, model.state_dict())
            trainer_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
            }
            torch_io.save_object(writer, TRAINER_FILE, trainer_state)
            meta = {
                "framework": "pytorch",
                "progress": progress.to_meta(),
                "world_size": world,
                "batch_size": config.batch_size,
                "seed": config.seed,
                "attempt": ctx.job.attempt,
                **(extra_meta or {}),
            }
            ckpt = writer.commit(meta)
        metrics.observe_checkpoint(progress.step, time.perf_counter() - t0, ckpt.created)
        schedule.mark_saved()
        last_saved = progress.step

    sampler = ResumableDistributedSampler(len(dataset), world, rank, seed=config.seed, shuffle=config.shuffle)  # type: ignore[arg-type]
    vote = StopVote(ctx.control_group, world, config.stop_check_every)
    global_batch = config.batch_size * world
    is_logger = rank == 0 and config.print_progress
    loss = torch.zeros(())
    log_t, log_step = time.perf_counter(), progress.step
    t_prev = loop_start = time.perf_counter()
    cpu_start = time.process_time()
    try:
        while progress.step < config.steps:
            sampler.set_epoch(progress.epoch, progress.consumed_in_epoch)
            # Per-epoch generator: DataLoader draws worker seeds from it, never from the global RNG.
            gen = torch.Generator()
            gen.manual_seed(step_seed(config.seed, progress.epoch, rank) ^ 0x5EED)
            loader = DataLoader(
                dataset,
                batch_size=config.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=config.num_workers,
                generator=gen,
                pin_memory=ctx.device.type == "cuda",
            )
            if len(loader) == 0 and progress.consumed_in_epoch == 0:
                raise ValueError(
                    f"dataset of {len(sampler)} samples per rank is too small for one batch of {config.batch_size}"
                )
            reached_end = False
            for batch in loader:
                if config.reseed_every_step:
                    reseed(step_seed(config.seed, progress.step, rank), ctx.device)
                batch = _to_device(batch, ctx.device)
                optimizer.zero_grad(set_to_none=True)
                loss = step_fn(ddp, batch)
                loss.backward()  # type: ignore[no-untyped-call]
                waited = clock.waited(time.perf_counter()) if clock is not None else 0.0
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                progress.step += 1
                progress.consumed_in_epoch += global_batch
                progress.samples_total += global_batch
                if config.step_sleep:
                    time.sleep(config.step_sleep)
                now = time.perf_counter()
                metrics.observe_step(now - t_prev, config.batch_size, waited)
                t_prev = now
                if progress.step % config.log_every == 0 or progress.step == config.steps:
                    loss_value = float(loss.item())
                    metrics.set_loss(loss_value)
                    if is_logger:
                        rate = (progress.step - log_step) * global_batch / max(now - log_t, 1e-9)
                        print(
                            f"step {progress.step}/{config.steps} loss {loss_value:.4f} samples/s {rate:.0f}",
                            flush=True,
                        )
                        log_t, log_step = now, progress.step
                if progress.step >= config.steps:
                    reached_end = True
                    break
                if vote.poll(progress.step, ctx.preemption.requested):
                    save()
                    raise Preempted(progress.step, saved=store is not None)
                if ctx.is_writer and (schedule.step_due(progress.step) or schedule.time_due()):
                    save()
            if not reached_end:
                progress.epoch += 1
                progress.consumed_in_epoch = 0
        vote.drain()
        if config.save_at_end:
            save()
    except Preempted:
        raise
    except Exception:
        if ctx.preemption.requested:
            # A peer already exited for the preemption (e.g. it got SIGTERM before the vote
            # could include us): the collective failed. Still a retryable stop, not a crash.
            log.exception("collective failed after SIGTERM; exiting as preempted without a save")
            raise Preempted(progress.step, saved=False) from None
        raise
    final_loss = float(loss.item())
    metrics.set_loss(final_loss)
    loop_cpu_s = time.process_time() - cpu_start
    return TrainResult(
        step=progress.step,
        resumed_from=resumed_from,
        loss=final_loss,
        samples_total=progress.samples_total,
        elapsed_s=time.perf_counter() - started,
        loop_s=t_prev - loop_start,
        loop_cpu_s=loop_cpu_s,
        last_checkpoint_step=last_saved,
    )
