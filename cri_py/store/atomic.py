"""Crash-safe file replacement: a reader sees the old content or the new, never a torn write."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Writes `data` to `path` via a temp file and a rename; `durable`: the file and then its
    directory are fsynced too, so the new content survives a power loss.

    Not durable is for a state that only a crash of the daemon (not of the machine) must
    find: the page cache keeps it, and after a power loss the processes and mounts it
    describes are gone anyway (a later durable write, or `sync_files`, makes it stick)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # os-level calls: a buffered file object costs more system calls and Python frames
        # than the write itself, and every record save comes here.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sync_files(*paths: Path) -> None:
    """Makes files written without `durable` survive a power loss: their data (the
    directory entries then need a durable write or `sync_directory` in their directory)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, value: Any, durable: bool = True) -> None:
    write_atomic(path, json.dumps(value, sort_keys=True).encode(), durable=durable)


def read_json(path: Path) -> Any | None:
    """The JSON value stored at `path`, or None when there is no file."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def read_json_written(path: Path) -> Any | None:
    """As `read_json`, for a file whose first write was not durable: empty, as a power loss
    can leave such a write, reads as no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(data) if data else None
