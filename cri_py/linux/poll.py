"""Waiting for one descriptor to become readable, with poll(2).

select(2) takes descriptors below FD_SETSIZE (1024) only: past that, Python's select.select
raises "filedescriptor out of range in select()". A daemon with a few hundred pods holds more
descriptors than that (each pod's shim connections, event streams, logs), so every wait on a
single descriptor goes through poll, which has no such limit.
"""

from __future__ import annotations

import math
import select
from typing import Protocol


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def wait_readable(fd: int | _HasFileno, timeout: float | None) -> bool:
    """True once `fd` is readable, at end of file or in error (a read will not block); False
    when `timeout` seconds passed first (None: wait as long as it takes)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    milliseconds = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return bool(poller.poll(milliseconds))
