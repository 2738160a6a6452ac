"""The files of one cluster's state directory, and its cluster.json record."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster.binaries import REPO_ROOT
from localcluster.errors import ClusterError

DIR_ENV = "PHALANX_CLUSTER_DIR"
MARKER = ".phalanx-cluster"
# Entries `up` may delete when it cleans a stale cluster; anything else in the dir is left alone.
OWNED = ("cluster.json", "kubeconfig", "pids", "pki", "config", "run", "logs", ".lock", MARKER)


def default_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or REPO_ROOT / ".cluster")


@dataclass(frozen=True)
class Layout:
    dir: Path

    @property
    def state_file(self) -> Path:
        return self.dir / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def config(self) -> Path:
        return self.dir / "config"

    @property
    def run(self) -> Path:
        return self.dir / "run"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def pidfile(self, component: str) -> Path:
        return self.dir / "pids" / f"{component}.pid"

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            # A torn write (killed mid-save) is a stale cluster, handled like one.
            return {"processes": [], "phase": "corrupt"}
        return data if isinstance(data, dict) else {"processes": [], "phase": "corrupt"}

    def write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)  # atomic: readers never see half a file
        pids = self.dir / "pids"
        pids.mkdir(exist_ok=True)
        for proc in state.get("processes", []):
            self.pidfile(proc["name"]).write_text(f"{proc['pid']}\n")

    def claim(self) -> None:
        """Make the dir ours; refuse a non-empty dir some other tool made."""
        if self.dir.exists() and not (self.dir / MARKER).exists():
            if not self.dir.is_dir():
                raise ClusterError(f"{self.dir} is a file; pass a directory with --dir")
            if any(p.name != ".lock" for p in self.dir.iterdir()):
                raise ClusterError(
                    f"{self.dir} is not empty and was not created by localcluster; pass another --dir or empty it"
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / MARKER).write_text("state dir of `python -m localcluster`; safe to delete when it is down\n")

    def clean(self) -> None:
        """Remove what a previous run left (keeps the marker and the lock file)."""
        for name in OWNED:
            if name in (MARKER, ".lock"):
                continue
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise up/down on one dir: two `up`s racing would each start a control plane."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ClusterError(
                    f"another `localcluster up/down` is working on {self.dir}; wait for it to finish"
                ) from None
            yield
