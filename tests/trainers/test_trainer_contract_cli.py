"""A missing or garbled contract: one clear stderr line naming the variable, exit EXIT_BAD_CONTRACT."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phalanx import contract
from tests.trainers.harness import REPO, TF_TRAINER, TORCH_TRAINER, base_env

pytestmark = pytest.mark.training

TORCH_OK = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "0"}


def run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--steps", "1"],
        env=base_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("module", "env", "variable"),
    [
        (TORCH_TRAINER, {k: v for k, v in TORCH_OK.items() if k != "MASTER_ADDR"}, "MASTER_ADDR"),
        (TORCH_TRAINER, {**TORCH_OK, "RANK": "2"}, "RANK"),
        (TORCH_TRAINER, {**TORCH_OK, "WORLD_SIZE": "two"}, "WORLD_SIZE"),
        (TORCH_TRAINER, {**TORCH_OK, "PHALANX_ATTEMPT": "0"}, "PHALANX_ATTEMPT"),
        (TF_TRAINER, {"TF_CONFIG": "{'cluster': not json"}, "TF_CONFIG"),
        (TF_TRAINER, {}, "TF_CONFIG"),
        (
            TF_TRAINER,
            {"TF_CONFIG": '{"cluster": {"worker": ["a:2222"]}, "task": {"type": "worker", "index": 3}}'},
            "TF_CONFIG",
        ),
    ],
)
def test_bad_contract_gives_one_line_and_exit_2(module: str, env: dict[str, str], variable: str) -> None:
    proc = run(module, env)
    assert proc.returncode == contract.EXIT_BAD_CONTRACT, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{module}: bad contract: {variable}: "), lines[0]
    assert "Traceback" not in proc.stderr


def test_keras3_with_mwms_fit_is_refused_with_one_line() -> None:
    tf_config = '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}'
    proc = run(TF_TRAINER, {"TF_CONFIG": tf_config, "TF_USE_LEGACY_KERAS": "0"})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Keras 3" in lines[0] and "tf-keras" in lines[0], proc.stderr
