"""Durability helpers: the few syscalls that make a rename-based commit survive a crash."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    # A rename or create is durable only once the directory holding the entry is fsynced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> dict[str, int]:
    """fsync every file and directory under root (bottom-up); return {relative file path: size}."""
    sizes: dict[str, int] = {}
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        base = Path(dirpath)
        for name in filenames:
            path = base / name
            fsync_file(path)
            sizes[str(path.relative_to(root))] = path.stat().st_size
        fsync_dir(base)
    return sizes


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write a small file under a temp name, fsync it, rename it into place, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
