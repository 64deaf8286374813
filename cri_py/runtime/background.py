"""Work a call starts on a thread of its own and collects later, so that it overlaps the
call's other steps (a pod's CNI ADD while its shim starts, an fsync while a shim creates).
A thread each, not a pool: one pod's step must not queue behind another pod's."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def started(fn: Callable[..., T], *args: Any) -> Future[T]:
    """`fn(*args)` running on a new thread; its result (or exception) in the future."""
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:
            future.set_exception(e)

    name = f"cri-py-{getattr(fn, '__name__', 'work')}"
    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def settled(future: Future[Any]) -> None:
    """Waits for `future` to end, whatever its outcome (an undo's first step: the work it
    undoes must be over)."""
    futures.wait([future])
