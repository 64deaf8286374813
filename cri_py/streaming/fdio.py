"""Non-blocking reads and writes of pipe and terminal fds from the event loop."""

from __future__ import annotations

import asyncio
import errno
import os


async def _wait(fd: int, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add, remove = (
        (loop.add_writer, loop.remove_writer)
        if writable
        else (
            loop.add_reader,
            loop.remove_reader,
        )
    )
    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


async def read(fd: int, size: int = 32 * 1024) -> bytes:
    """Up to `size` bytes; b"" at EOF (EIO: a terminal whose other side closed)."""
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await _wait(fd, writable=False)
        except OSError as e:
            if e.errno == errno.EIO:
                return b""
            raise


async def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await _wait(fd, writable=True)
            continue
        view = view[written:]
