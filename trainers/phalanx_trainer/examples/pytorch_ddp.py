"""Reference PyTorch DDP trainer: a small MLP classifier on synthetic data, deterministic by seed.

    python -m phalanx_trainer.examples.pytorch_ddp --steps 200 --batch-size 32 --seed 0

Reads the operator's env (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK or PHALANX_PROCS_PER_POD,
PHALANX_CHECKPOINT_*, PHALANX_METRICS_PORT); `--standalone` fills in a one-process world for a
quick local try. Rank 0 prints `step 50/200 loss 0.123 samples/s 1234` lines and a final `done`
line; `--out` saves the final parameters (rank 0) so runs can be compared bit for bit.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from phalanx import contract
from phalanx_trainer.cli import run_main
from phalanx_trainer.env import TorchEnv, read_job_env, read_torch_env
from phalanx_trainer.inplace import watch_attempt

PROG = "phalanx_trainer.examples.pytorch_ddp"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--steps", type=int, default=200, help="total optimizer steps of the job")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dataset-size", type=int, default=4096)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (slower demos)")
    p.add_argument("--slow-rank", type=int, default=None, help="this global rank sleeps --slow-sleep more per step")
    p.add_argument("--slow-sleep", type=float, default=0.0, help="extra seconds per step of --slow-rank (a straggler)")
    p.add_argument("--checkpoint-every-steps", type=int, default=None)
    p.add_argument(
        "--checkpoint-interval-seconds", type=float, default=None, help="default: PHALANX_CHECKPOINT_INTERVAL_SECONDS"
    )
    p.add_argument("--no-final-checkpoint", action="store_true")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--stop-check-every", type=int, default=10, help="steps between the ranks' SIGTERM votes")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    p.add_argument("--out", default=None, help="rank 0 saves the final model state_dict here (torch.save)")
    p.add_argument(
        "--dump-resume-state",
        default=None,
        help="directory: every rank saves the model state it resumed with (rank<N>.pt)",
    )
    p.add_argument("--standalone", action="store_true", help="no operator env needed: one local process")
    return p.parse_args(argv)


def _standalone_env() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        {
            contract.MASTER_ADDR: "127.0.0.1",
            contract.MASTER_PORT: str(port),
            contract.WORLD_SIZE: "1",
            contract.RANK: "0",
        }
    )


def make_dataset(args: argparse.Namespace) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    # A fixed random "teacher" labels Gaussian inputs: learnable, and the same on every rank.
    g = torch.Generator().manual_seed(10_000 + args.seed)
    x = torch.randn(args.dataset_size, args.features, generator=g)
    teacher = torch.randn(args.features, args.classes, generator=g)
    y = (torch.tanh(x) @ teacher).argmax(dim=1)
    return TensorDataset(x, y)


def make_model(args: argparse.Namespace) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(args.seed)
    return nn.Sequential(
        nn.Linear(args.features, args.hidden),
        nn.ReLU(),
        nn.Dropout(args.dropout),
        nn.Linear(args.hidden, args.hidden),
        nn.ReLU(),
        nn.Linear(args.hidden, args.classes),
    )


def worker(torch_env: TorchEnv, args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    from phalanx_trainer.pytorch import TrainConfig, distributed, train

    torch.set_num_threads(args.threads)
    with distributed(torch_env=torch_env) as ctx:
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_every_steps=args.checkpoint_every_steps,
            checkpoint_interval_seconds=args.checkpoint_interval_seconds,
            save_at_end=not args.no_final_checkpoint,
            stop_check_every=args.stop_check_every,
            log_every=args.log_every,
            step_sleep=args.step_sleep + (args.slow_sleep if ctx.rank == args.slow_rank else 0.0),
        )

        def on_resume(model: nn.Module, _progress: object) -> None:
            if args.dump_resume_state:
                os.makedirs(args.dump_resume_state, exist_ok=True)
                torch.save(model.state_dict(), os.path.join(args.dump_resume_state, f"rank{ctx.rank}.pt"))

        model = make_model(args)
        result = train(
            ctx,
            model,
            make_dataset(args),
            nn.CrossEntropyLoss(),
            lambda params: torch.optim.AdamW(params, lr=args.lr),
            config,
            on_resume=on_resume,
        )
        if ctx.rank == 0:
            if args.out:
                tmp = f"{args.out}.tmp"
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
                os.replace(tmp, args.out)
            resumed = result.resumed_from if result.resumed_from is not None else -1
            steps_run = result.step - max(resumed, 0)
            rate = steps_run * args.batch_size * ctx.world_size / max(result.loop_s, 1e-9)
            ckpt = result.last_checkpoint_step if result.last_checkpoint_step is not None else -1
            print(
                f"done step {result.step}/{args.steps} loss {result.loss:.4f} world {ctx.world_size} "
                f"resumed_from {resumed} checkpoint {ckpt} elapsed {result.elapsed_s:.1f}s samples/s {rate:.0f}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.standalone:
        _standalone_env()
    # Validate the whole contract before importing torch: a bad env fails in milliseconds.
    watch_attempt(read_job_env())  # restartMode InPlace: a run of an old attempt leaves at once
    torch_env = read_torch_env()
    from phalanx_trainer.pytorch import run_per_process

    return run_per_process(worker, args, torch_env)


if __name__ == "__main__":
    run_main(main, PROG)
    sys.exit(0)
