"""Footprint of one process from /proc: CPU seconds (user + system, all threads) and RSS."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `echo 5 > clear_refs`), so the next peak is this window's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def machine_load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def machine_busy_fraction(seconds: float = 1.0) -> float:
    """Share of all cores busy over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = parts[3] + parts[4]
        return sum(parts), idle

    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


@dataclass
class Window:
    """CPU seconds and peak RSS of `pid` between start() and stop()."""

    pid: int
    cpu0: float = 0.0
    t0: float = 0.0
    cpu: float = 0.0
    seconds: float = 0.0
    peak_mib: float = 0.0
    peak_is_window: bool = False

    def start(self) -> Window:
        self.peak_is_window = reset_peak(self.pid)
        self.cpu0, self.t0 = cpu_seconds(self.pid), time.monotonic()
        return self

    def stop(self) -> Window:
        self.cpu = cpu_seconds(self.pid) - self.cpu0
        self.seconds = time.monotonic() - self.t0
        self.peak_mib = peak_rss_mib(self.pid)
        return self

    def to_json(self) -> dict[str, float | bool]:
        return {
            "cpu_seconds": round(self.cpu, 3),
            "wall_seconds": round(self.seconds, 3),
            "peak_rss_mib": round(self.peak_mib, 1),
            "peak_is_window": self.peak_is_window,
        }


def wait_quiet(pid: int, threshold: float = 0.05, window: float = 1.0, timeout: float = 60.0) -> float:
    """Wait until `pid` uses under `threshold` of one core over `window` seconds; returns seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        c0 = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - c0 < threshold * window:
            break
    return time.monotonic() - started
