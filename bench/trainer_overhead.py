"""Trainer runtime overhead and checkpoint throughput: `python -m bench.trainer_overhead`.

1. Step-time overhead of phalanx_trainer's loop (metrics, checkpoint-schedule checks, per-step
   reseed, the async preemption vote) against a bare DDP loop on the same model, data, sampler
   and optimizer: 2 Gloo ranks on CPU, trials in adjacent bare/runtime pairs (order alternating),
   both wall time and process CPU time per step (CPU time is far less disturbed by other load on
   a shared machine), reported as the median of per-pair ratios and as the ratio of the fastest
   trials. The per-step hook costs are also timed directly and shown as a fraction of the bare step.
2. Checkpoint save throughput (store + torch adapter: torch.save, fsync, rename, marker) against
   the raw write speed of the same disk: dd-like write + fsync of the same number of bytes.
   Median over repeats, alternating the two.

Prints a table and writes JSON under bench-results/. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "operator", REPO / "trainers"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- part 1: step overhead -------------------------------------------------------------------------


def _model_and_data(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    torch.manual_seed(args.seed)
    layers: list[nn.Module] = [nn.Linear(args.features, args.hidden), nn.ReLU()]
    for _ in range(args.layers - 1):
        layers += [nn.Linear(args.hidden, args.hidden), nn.ReLU()]
    layers.append(nn.Linear(args.hidden, 10))
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.dataset_size, args.features, generator=g)
    y = torch.randint(0, 10, (args.dataset_size,), generator=g)
    return nn.Sequential(*layers), TensorDataset(x, y)


def _bare_trial(args: argparse.Namespace, rank: int, world: int) -> tuple[float, float]:
    """A plain DDP loop: DistributedSampler, DataLoader, DDP, AdamW. Returns (wall, CPU) s/step."""
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    model, data = _model_and_data(args)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, seed=args.seed, drop_last=True)
    step, epoch = 0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for x, y in DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(x), y)
            loss.backward()
            opt.step()
            step += 1
            if step % args.log_every == 0:
                loss.item()  # the bare loop logs too, as any real loop does
            if step >= args.steps:
                break
        epoch += 1
    return (time.perf_counter() - start) / args.steps, (time.process_time() - cpu_start) / args.steps


def _runtime_trial(args: argparse.Namespace, ctx: Any, ckpt_root: Path) -> tuple[float, float]:
    import torch
    from torch import nn

    from phalanx_trainer.checkpoint.store import CheckpointStore
    from phalanx_trainer.pytorch.loop import TrainConfig, train

    ctx.store = CheckpointStore(ckpt_root, keep=1)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    model, data = _model_and_data(args)
    # Checkpoint hooks armed (an interval that does not elapse during the trial, so no save lands
    # inside the timed loop; the save cost itself is part 2), no final save.
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_interval_seconds=3600.0,
        save_at_end=False,
        print_progress=False,
        stop_check_every=args.stop_check_every,
    )
    result = train(ctx, model, data, nn.CrossEntropyLoss(), lambda p: torch.optim.AdamW(p, lr=1e-3), config)
    return result.loop_s / args.steps, result.loop_cpu_s / args.steps


def _hook_costs(ctx: Any, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per call of each per-step hook, timed directly."""
    from phalanx_trainer.pytorch.loop import StopVote, reseed, step_seed
    from phalanx_trainer.schedule import SaveSchedule

    n = 20000
    m, sched = ctx.metrics, SaveSchedule(every_steps=None, interval_seconds=3600.0)
    t0 = time.perf_counter()
    for _ in range(n):
        m.observe_step(0.01, args.batch_size)
    metrics_s = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        sched.step_due(i) or sched.time_due()
    schedule_s = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for i in range(n):
        reseed(step_seed(0, i, ctx.rank), ctx.device)
    reseed_s = (time.perf_counter() - t0) / n
    # The vote: time only the poll call. A barrier first lines the ranks up as DDP's lockstep
    # does, and the sleep lets the previous all-reduce finish, as it does during a real step.
    import torch.distributed as dist

    vote = StopVote(ctx.control_group, ctx.world_size, 1)
    polls = 300
    spent = 0.0
    for i in range(1, polls + 1):
        dist.barrier()
        time.sleep(0.002)
        t0 = time.perf_counter()
        vote.poll(i, False)
        spent += time.perf_counter() - t0
    vote.drain()
    return {
        "metrics_observe_step": metrics_s,
        "collective_wait_clock": _clock_cost(),
        "checkpoint_schedule_check": schedule_s,
        "reseed": reseed_s,
        # Paid once per stop_check_every steps.
        "stop_vote_poll_amortized": spent / polls / args.stop_check_every,
    }


def _clock_cost() -> float:
    """Seconds per step of the collective-wait clock, timed directly: its hook and its read."""
    from phalanx_trainer.pytorch.collectives import AllReduceClock

    clock, n = AllReduceClock(), 100000
    t0 = time.perf_counter()
    for _ in range(n):
        clock._hook(None)  # type: ignore[arg-type]
        clock.waited(time.perf_counter())
    return (time.perf_counter() - t0) / n


def _overhead_worker(rank: int, args: argparse.Namespace, port: int, world: int, out: str, ckpt_root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        NODE_RANK=str(rank),
        PHALANX_PROCS_PER_POD="1",
    )
    import torch

    torch.set_num_threads(args.threads)
    from phalanx_trainer.pytorch.distributed import init_distributed

    ctx = init_distributed(serve_metrics=False)  # one process per "pod": metrics enabled on every rank
    bare: list[tuple[float, float]] = []
    runtime: list[tuple[float, float]] = []
    try:
        # One untimed trial of each first: allocator, thread pools and lazy imports warm up.
        _bare_trial(args, ctx.rank, world)
        _runtime_trial(args, ctx, Path(ckpt_root) / f"r{rank}")
        for r in range(args.repeats):
            order = ("bare", "runtime") if r % 2 == 0 else ("runtime", "bare")  # cancel drift
            for mode in order:
                if mode == "bare":
                    bare.append(_bare_trial(args, ctx.rank, world))
                else:
                    runtime.append(_runtime_trial(args, ctx, Path(ckpt_root) / f"r{rank}"))
        hooks = _hook_costs(ctx, args)
    finally:
        ctx.close()
    if rank == 0:
        Path(out).write_text(json.dumps({"bare_step_s": bare, "runtime_step_s": runtime, "hook_s": hooks}))


def bench_overhead(args: argparse.Namespace) -> dict[str, Any]:
    import torch.multiprocessing as tmp

    world = 2
    with tempfile.TemporaryDirectory() as tmpdir:
        out = os.path.join(tmpdir, "overhead.json")
        tmp.start_processes(
            _overhead_worker, args=(args, _free_port(), world, out, tmpdir), nprocs=world, start_method="spawn"
        )
        raw = json.loads(Path(out).read_text())
    summary: dict[str, Any] = {
        "world_size": world,
        "model": f"MLP {args.features}-{args.hidden}x{args.layers}-10, batch {args.batch_size}/rank, AdamW",
        "steps_per_trial": args.steps,
        "repeats": args.repeats,
        "stop_check_every": args.stop_check_every,
    }
    for k, kind in ((0, "wall"), (1, "cpu")):
        bare = [t[k] for t in raw["bare_step_s"]]
        runtime = [t[k] for t in raw["runtime_step_s"]]
        summary[kind] = {
            "bare_step_s_median": statistics.median(bare),
            "runtime_step_s_median": statistics.median(runtime),
            # Trials run in adjacent bare/runtime pairs; the median of per-pair ratios cancels drift.
            "overhead_paired": statistics.median(r / b for b, r in zip(bare, runtime, strict=True)) - 1.0,
            # Noise on a shared machine only ever adds time: the fastest trials are the cleanest pair.
            "overhead_fastest": min(runtime) / min(bare) - 1.0,
            "trials_bare": bare,
            "trials_runtime": runtime,
        }
    per_step_hooks = sum(raw["hook_s"].values())
    summary["hook_s_per_step"] = raw["hook_s"]
    summary["hooks_total_s_per_step"] = per_step_hooks
    summary["overhead_from_hooks"] = per_step_hooks / summary["wall"]["bare_step_s_median"]
    return summary


# --- part 2: checkpoint throughput -------------------------------------------------------------


def _raw_write(path: Path, nbytes: int, chunk: bytes) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            n = min(left, len(chunk))
            f.write(chunk[:n] if n < len(chunk) else chunk)
            left -= n
        f.flush()
        os.fsync(f.fileno())
    os.unlink(path)
    return time.perf_counter() - t0


def bench_checkpoint(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import torch

    from phalanx_trainer.checkpoint import torch_io
    from phalanx_trainer.checkpoint.store import CheckpointStore

    torch.manual_seed(0)
    n_tensors = 16
    per = int(args.checkpoint_mb * 2**20 / 4 / n_tensors)
    state = {f"layer{i}.weight": torch.randn(per) for i in range(n_tensors)}
    store = CheckpointStore(root / "store", keep=1)
    chunk = os.urandom(8 * 2**20)
    save_s: list[float] = []
    raw_s: list[float] = []
    nbytes = 0
    for r in range(args.checkpoint_repeats):
        for mode in ("store", "raw") if r % 2 == 0 else ("raw", "store"):
            if mode == "store":
                t0 = time.perf_counter()
                with store.begin(r + 1) as w:
                    torch_io.save_object(w, "model.pt", state)
                    ckpt = w.commit({"bench": True})
                save_s.append(time.perf_counter() - t0)
                nbytes = ckpt.nbytes
            else:
                # Same byte count as the last checkpoint (the first raw run uses the tensor bytes).
                size = nbytes or sum(t.numel() * 4 for t in state.values())
                raw_s.append(_raw_write(root / "raw.bin", size, chunk))
    store_med, raw_med = statistics.median(save_s), statistics.median(raw_s)
    mib = nbytes / 2**20
    return {
        "checkpoint_mib": mib,
        "repeats": args.checkpoint_repeats,
        "save_s_median": store_med,
        "raw_write_fsync_s_median": raw_med,
        "save_mib_per_s": mib / store_med,
        "raw_mib_per_s": mib / raw_med,
        "save_vs_raw": raw_med / store_med,
        "trials": {"save_s": save_s, "raw_write_fsync_s": raw_s},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trainer_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="timed steps per trial")
    p.add_argument("--repeats", type=int, default=12, help="trials per mode (alternating)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--dataset-size", type=int, default=8192)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stop-check-every", type=int, default=10, help="TrainConfig.stop_check_every (its default: 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-mb", type=float, default=256)
    p.add_argument("--checkpoint-repeats", type=int, default=5)
    p.add_argument("--checkpoint-dir", default=None, help="disk to test (default: a temp dir under bench-results/)")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--out-dir", default=str(REPO / "bench-results"))
    args = p.parse_args(argv)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "bench": "trainer_overhead",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": os.getloadavg(),
        },
    }
    import torch

    result["machine"]["torch"] = torch.__version__
    if not args.skip_overhead:
        result["overhead"] = bench_overhead(args)
    ckpt_parent = Path(args.checkpoint_dir) if args.checkpoint_dir else out_dir
    with tempfile.TemporaryDirectory(dir=ckpt_parent, prefix="ckpt-bench-") as d:
        result["checkpoint"] = bench_checkpoint(args, Path(d))
    result["machine"]["loadavg_end"] = os.getloadavg()

    mach = result["machine"]
    print(f"trainer runtime benchmark ({mach['cpus']} CPUs, load {mach['loadavg_start'][0]:.1f})")
    if "overhead" in result:
        o = result["overhead"]
        print(
            f"  step overhead, {o['model']}, {o['world_size']} Gloo ranks, "
            f"median of {o['repeats']} x {o['steps_per_trial']} steps"
        )
        w, c = o["wall"], o["cpu"]
        print(f"    {'':<34} {'wall ms/step':>12} {'CPU ms/step':>12}")
        for label, key in (
            ("bare DDP loop (median)", "bare_step_s_median"),
            ("phalanx_trainer.train (median)", "runtime_step_s_median"),
        ):
            print(f"    {label:<34} {w[key] * 1e3:12.3f} {c[key] * 1e3:12.3f}")
        for label, key in (
            ("overhead, median of pairs", "overhead_paired"),
            ("overhead, fastest trials", "overhead_fastest"),
        ):
            print(f"    {label:<34} {w[key] * 100:+11.2f}% {c[key] * 100:+11.2f}%")
        for name, s in o["hook_s_per_step"].items():
            print(f"    hook {name:<29} {s * 1e6:9.2f} us/step")
        print(f"    {'overhead, from hook costs':<34} {o['overhead_from_hooks'] * 100:9.3f} %")
    c = result["checkpoint"]
    print(f"  checkpoint save, {c['checkpoint_mib']:.0f} MiB, median of {c['repeats']}")
    for label, secs, rate in (
        ("store + torch.save (fsync, commit)", c["save_s_median"], c["save_mib_per_s"]),
        ("raw write + fsync, same bytes", c["raw_write_fsync_s_median"], c["raw_mib_per_s"]),
    ):
        print(f"    {label:<34} {secs:9.3f} s  {rate:8.1f} MiB/s")
    print(f"    {'checkpoint / raw throughput':<34} {c['save_vs_raw'] * 100:9.1f} %")
    path = out_dir / f"trainer_overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
