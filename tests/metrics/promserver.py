"""A real Prometheus server for tests: Debian's `prometheus` package (or a build cached outside the repo),
started with static scrape configs in a temp dir, queried through its HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import process

INSTALL_HINT = (
    "install it: `apt-get install -y prometheus` (Debian/Ubuntu: /usr/bin/prometheus and /usr/bin/promtool), "
    "or put prometheus and promtool binaries in ~/.cache/phalanx/bin, or name them with $PHALANX_PROMETHEUS "
    "and $PHALANX_PROMTOOL"
)


def find_binary(name: str) -> Path:
    """A prometheus or promtool binary; a missing one FAILS the test (CI must run these) with the fix."""
    env = os.environ.get(f"PHALANX_{name.upper()}")
    candidates = [env] if env else []
    candidates.append(shutil.which(name))
    cache = Path(os.environ.get("PHALANX_CACHE", Path.home() / ".cache" / "phalanx")) / "bin"
    candidates += [str(p) for p in sorted(cache.glob(f"{name}-*"), reverse=True)] + [str(cache / name)]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    pytest.fail(f"{name} not found; {INSTALL_HINT}", pytrace=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]], interval: str = "1s") -> None:
        self.binary = find_binary("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            # The evaluation interval is also the default resolution of subqueries.
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "scrape_configs": scrape_configs,
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started = time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after 60s: {self.log.read_text()[-2000:]}")

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path} {params}: HTTP {e.code}: {e.read().decode()[:1000]}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] in ("vector", "matrix") else []
        return result

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of an instant query, None when it has no result."""
        result = self.query(expr, at)
        assert len(result) <= 1, f"{expr}: {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> dict[str, str]:
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def stop(self) -> None:
        process.end(self.proc)
