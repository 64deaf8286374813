"""Waiting on one descriptor (cri_py.linux.poll): works for descriptors past select()'s 1024,
which a daemon with a few hundred pods holds."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator

import pytest

from cri_py.linux.poll import wait_readable

HIGH_FD = 1500


@pytest.fixture
def high_pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose read end is descriptor 1500."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= HIGH_FD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, HIGH_FD + 100), hard))
    r, w = os.pipe()
    os.dup2(r, HIGH_FD)
    os.close(r)
    try:
        yield HIGH_FD, w
    finally:
        os.close(HIGH_FD)
        os.close(w)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_descriptor_past_1024_times_out_then_becomes_readable(
    high_pipe: tuple[int, int],
) -> None:
    r, w = high_pipe
    assert not wait_readable(r, 0.01)
    os.write(w, b"x")
    assert wait_readable(r, 1.0)
    assert wait_readable(r, None)


def test_end_of_file_counts_as_readable(high_pipe: tuple[int, int]) -> None:
    r, w = high_pipe
    os.close(os.dup(w))  # another end closed: still open, not EOF
    assert not wait_readable(r, 0)
    a, b = socket.socketpair()
    with a, b:
        b.close()
        assert wait_readable(a, 0.5)  # a socket object, at end of file
