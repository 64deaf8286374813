"""Tells the daemon when a shim exits, without polling: one thread waits on a pidfd per shim.

A pidfd works for processes that are not our children (shims are re-parented away from the
daemon) and, once opened and checked against the recorded start time, cannot be fooled by PID
reuse.
"""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Callable

from cri_py.log import get_logger
from cri_py.shim.client import ShimProcess, process_start_time

log = get_logger("cri_py.shim")


class ShimWatcher:
    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._fds: dict[str, int] = {}
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, "")
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="shim-watcher", daemon=True)
        self._thread.start()

    def watch(self, sandbox_id: str, shim: ShimProcess) -> bool:
        """Starts watching; False (and no callback) when the shim is already gone."""
        try:
            fd = os.pidfd_open(shim.pid)
        except ProcessLookupError:
            return False
        # Checked after opening: the pidfd now pins this very process, whatever its PID does.
        if process_start_time(shim.pid) != shim.start_time:
            os.close(fd)
            return False
        with self._lock:
            old = self._fds.pop(sandbox_id, None)
            if old is not None:
                self._selector.unregister(old)
                os.close(old)
            self._fds[sandbox_id] = fd
            self._selector.register(fd, selectors.EVENT_READ, sandbox_id)
        os.write(self._wake_write, b"x")
        return True

    def unwatch(self, sandbox_id: str) -> None:
        with self._lock:
            fd = self._fds.pop(sandbox_id, None)
            if fd is not None:
                self._selector.unregister(fd)
                os.close(fd)

    def wait_exit(self, sandbox_id: str, timeout: float) -> bool:
        """Waits until the watched shim exits; True if it did (or is not watched)."""
        with self._lock:
            fd = self._fds.get(sandbox_id)
            if fd is None:
                return True
            copy = os.dup(fd)
        try:
            with selectors.DefaultSelector() as one:
                one.register(copy, selectors.EVENT_READ)
                return bool(one.select(timeout))
        finally:
            os.close(copy)

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_write, b"x")
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select():
                sandbox_id = key.data
                if not sandbox_id:
                    try:
                        while os.read(self._wake_read, 512):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:
                    fd = self._fds.pop(sandbox_id, None)
                    if fd is None:
                        continue
                    self._selector.unregister(fd)
                    os.close(fd)
                try:
                    self._on_exit(sandbox_id)
                except Exception:
                    log.error("shim exit callback failed", exc_info=True, sandbox=sandbox_id)
