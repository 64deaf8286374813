"""Work a call starts on another thread and collects later, so that it overlaps the call's
other steps (a pod's CNI ADD while its shim starts, an fsync while a shim creates).

Each piece of work gets a thread of its own, never a place in a queue (one pod's step must not
wait behind another pod's): an idle thread if one is waiting, else a new one. Idle threads are
kept because starting one costs the caller a wait: `Thread.start` returns only once the new
thread runs, which in a busy daemon is a wait for the GIL (~1.7 ms measured in RunPodSandbox).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

# An idle thread that gets no work for this long ends.
IDLE_SECONDS = 60.0

Job = Callable[[], None]


class Threads:
    """Threads that run one job at a time and wait for the next while idle."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[Job]] = []

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def run(self, job: Job) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is not None:
            inbox.put(job)
            return
        inbox = queue.SimpleQueue()
        inbox.put(job)
        threading.Thread(target=self._serve, args=(inbox,), name="cri-py-work", daemon=True).start()

    def _serve(self, inbox: queue.SimpleQueue[Job]) -> None:
        job = inbox.get()
        while True:
            job()
            del job  # what it holds is not kept alive while idle
            with self._lock:
                self._idle.append(inbox)
            try:
                job = inbox.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                job = inbox.get()  # handed out just as the wait ended


_threads = Threads()


def started(fn: Callable[..., T], *args: Any) -> Future[T]:
    """`fn(*args)` running on a thread of its own; its result (or exception) in the future."""
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:
            future.set_exception(e)

    _threads.run(run)
    return future


def settled(future: Future[Any]) -> None:
    """Waits for `future` to end, whatever its outcome (an undo's first step: the work it
    undoes must be over)."""
    futures.wait([future])
