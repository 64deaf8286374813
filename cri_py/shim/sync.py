"""The shim's end of a launch: forking the process that runs `cri_py.shim.launcher`, the sync
socket it reports on (the P/R/E/S messages documented in `launcher`), and killing what a
failed launch left. Used by `containers` (a container's init) and `execs` (an exec'd command).
The shim is single-threaded, so forking here is safe. Stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from cri_py.linux import syscalls
from cri_py.linux.poll import wait_readable
from cri_py.shim import launcher

SYNC_TIMEOUT_SECONDS = 10.0


class ContainerError(Exception):
    """An operation failed; `kind` is the protocol error kind ("not_found", "invalid", ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SetupProcesses:
    """The processes a launch reported as about to exec ("P"), held by pidfd (a PID could be
    reused once the process is reaped elsewhere): when the launch fails or times out they are
    killed, not only the intermediate process the shim forked. Killing a PID namespace's init
    ends every process in it."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self._pidfds: list[int] = []

    def add(self, pid: int) -> None:
        self.pids.append(pid)
        with contextlib.suppress(ProcessLookupError):
            self._pidfds.append(os.pidfd_open(pid))

    def kill(self) -> None:
        for pidfd in self._pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)

    def close(self) -> None:
        for pidfd in self._pidfds:
            os.close(pidfd)
        self._pidfds.clear()


def _credentials_pid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _, _ = struct.unpack("iII", payload[: struct.calcsize("iII")])
            return int(pid)
    return None


def receive_ready(
    sync: socket.socket,
    timeout: float,
    started: SetupProcesses | None = None,
    on_hooks: Callable[[int], bytes] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Waits for the child's "R" (its PID, from SCM_CREDENTIALS, and payload) or raises with
    its "E" text ("K": a hook failed, kind "hook_failed"). Each "P" before it (a process that
    will exec, with its PID) goes to `started`, for the caller to kill if this raises. An "H"
    (the init waits before pivot_root) calls `on_hooks` with the init's PID and sends back
    what it returns; the time it took does not count against `timeout`."""
    deadline = time.monotonic() + timeout
    size = socket.CMSG_SPACE(struct.calcsize("iII"))
    while True:
        if not wait_readable(sync, max(0.0, deadline - time.monotonic())):
            raise ContainerError("failed", f"the child did not get ready within {timeout}s")
        data, ancillary, _, _ = sync.recvmsg(65536, size)
        if data.startswith(b"E"):
            raise ContainerError("failed", data[1:].decode(errors="replace"))
        if data.startswith(b"K"):
            raise ContainerError("hook_failed", data[1:].decode(errors="replace"))
        pid = _credentials_pid(ancillary)
        if data == b"P":
            if pid is not None and started is not None:
                started.add(pid)
            continue
        if data == b"H":
            if on_hooks is None or started is None or not started.pids:
                raise ContainerError("failed", "the child asked for hooks nobody expected")
            began = time.monotonic()
            reply = on_hooks(started.pids[-1])
            sync.send(reply)
            deadline += time.monotonic() - began
            continue
        if not data.startswith(b"R"):
            raise ContainerError("failed", "the child exited during setup")
        if pid is None:
            raise ContainerError("failed", "the child's ready message carried no credentials")
        return pid, json.loads(data[1:] or b"{}")


def sync_pair() -> tuple[socket.socket, socket.socket]:
    """(the shim's end, the child's end) of a sync socket; ours receives credentials."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return ours, theirs


def fork_child(run: Callable[[], None], new_pid_namespace: bool = False) -> int:
    """Forks a child that runs `run` (which execs or exits) and never returns to the shim.
    `new_pid_namespace`: the child is born PID 1 of a PID namespace of its own, so that no
    setup process has to fork it there. The shim's later children go to its own namespace
    again (setns to it is allowed: it is the shim's active one)."""
    if not new_pid_namespace:
        return _fork_running(run)
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.unshare(syscalls.CLONE_NEWPID)
        try:
            return _fork_running(run)
        finally:
            syscalls.setns(own, syscalls.CLONE_NEWPID)
    finally:
        os.close(own)


def _fork_running(run: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            run()
        finally:
            os._exit(launcher.EXIT_SETUP_FAILED)
    return pid


def kill_and_reap(pid: int, patience: float = 1.0) -> None:
    """SIGKILL, then reaped once it is gone, for up to `patience` seconds. A child that cannot
    die yet is left to the shim's SIGCHLD loop: one frozen in its cgroup (v1 keeps a killed
    task until it is thawed) would otherwise hold the shim, and every pod call with it."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if wait_readable(pidfd, patience):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    finally:
        os.close(pidfd)


def nonblocking(fd: int) -> int:
    os.set_blocking(fd, False)
    return fd
