"""malloc_trim: freed C heap pages go back to the kernel, so the process's RSS drops."""

from __future__ import annotations

import ctypes

from cri_py.linux import malloc

CHUNK = 32 * 1024  # under glibc's mmap threshold: served from the heap, kept when freed
CHUNKS = 1024  # 32 MiB


def rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_trim_hands_freed_heap_pages_back() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(CHUNK) for _ in range(CHUNKS)]
    keep = libc.malloc(CHUNK)  # above the others: glibc cannot shrink the heap from its top
    try:
        for chunk in chunks:
            ctypes.memset(chunk, 1, CHUNK)  # resident
        for chunk in chunks:
            libc.free(chunk)
        freed = rss_anon_kib()
        assert malloc.trim()
        trimmed = rss_anon_kib()
        # Most of the 32 MiB freed (some of it may be reused by Python meanwhile).
        assert freed - trimmed > CHUNKS * CHUNK // 1024 // 2, (freed, trimmed)
    finally:
        libc.free(keep)
