"""Work started in the background: each piece on a thread of its own, idle threads reused."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from cri_py.runtime.background import Threads, settled, started


def test_work_never_waits_behind_other_work() -> None:
    # The first job can only end once the second ran: queued behind it, both would hang.
    second_ran = threading.Event()
    first = started(second_ran.wait, 10)
    second = started(second_ran.set)
    second.result(timeout=10)
    assert first.result(timeout=10) is True


def test_a_failure_reaches_whoever_waits() -> None:
    def fail() -> None:
        raise ValueError("no")

    future = started(fail)
    settled(future)
    with pytest.raises(ValueError, match="no"):
        future.result()


def _run(threads: Threads) -> int:
    done = threading.Event()
    ident: list[int] = []

    def job() -> None:
        ident.append(threading.get_ident())
        done.set()

    threads.run(job)
    assert done.wait(10)
    return ident[0]


def _wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_an_idle_thread_takes_the_next_job_then_ends_when_left_idle() -> None:
    threads = Threads(idle_seconds=0.2)
    first = _run(threads)
    assert _wait_until(lambda: threads.idle() == 1)
    assert _run(threads) == first  # no new thread
    assert _wait_until(lambda: threads.idle() == 0)
    assert _wait_until(lambda: first not in {t.ident for t in threading.enumerate()})
