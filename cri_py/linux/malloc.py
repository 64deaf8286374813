"""Handing the C heap's free memory back to the kernel: glibc's malloc_trim.

glibc keeps what the process freed for its next allocations; after an image pull (download,
decompression and unpack buffers) that is ~3 MiB of the daemon's RSS that stays until some
later allocation happens to reuse it. `malloc_trim(0)` returns the free pages of every arena
(a few milliseconds; it releases the GIL, as every ctypes call does).

Where the C library has no malloc_trim (musl), `trim` does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _load_trim() -> Callable[[int], int] | None:
    try:
        # The process's own symbols, the C library's among them (no library search).
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


_malloc_trim = _load_trim()


def trim() -> bool:
    """Returns the heap's free pages to the kernel; True when some were released."""
    return bool(_malloc_trim(0)) if _malloc_trim is not None else False
