"""Namespaces held by files: pin one (bind mount of /proc/<pid>/ns/<type>), unpin it, and run a
function with the calling thread inside a pinned network namespace.

A pin keeps a namespace alive after every process in it died, so the network of a pod whose shim
crashed can still be torn down. What to pin and where is decided by the sandbox service.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cri_py.linux import syscalls

T = TypeVar("T")

NAMESPACE_FLAGS = {
    "net": syscalls.CLONE_NEWNET,
    "ipc": syscalls.CLONE_NEWIPC,
    "uts": syscalls.CLONE_NEWUTS,
    "pid": syscalls.CLONE_NEWPID,
    "mnt": syscalls.CLONE_NEWNS,
}


def pin_namespace(pid: int, ns_type: str, path: Path) -> None:
    """Bind-mounts `/proc/<pid>/ns/<ns_type>` onto `path` (created empty if missing)."""
    _pin(f"/proc/{pid}/ns/{ns_type}", path)


def _pin(ns_file: str, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    syscalls.mount(ns_file, path, None, syscalls.MS_BIND)


def join_namespace(path: str | Path, flag: int) -> None:
    """setns into the namespace the file at `path` (a pin or a /proc ns file) refers to."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(fd, flag)
    finally:
        os.close(fd)


def unpin_namespace(path: Path) -> None:
    """Detaches the pin mount and removes its file; a path that is absent or not a mount is fine.

    MNT_DETACH: a process that still has the file open (a netlink worker) must not block us.
    """
    try:
        syscalls.umount2(path, syscalls.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    path.unlink(missing_ok=True)


def namespace_id(path: str | Path) -> str:
    """`net:[4026532...]`-style identity of the namespace a /proc ns file or pin refers to."""
    info = os.stat(path)
    return f"{info.st_dev}:{info.st_ino}"


def run_in_netns(netns: Path, fn: Callable[[], T]) -> T:
    """Calls `fn` on a fresh thread that has joined the network namespace pinned at `netns`.

    setns(CLONE_NEWNET) changes only the calling thread, and a socket keeps the namespace it was
    created in; a throw-away thread means no pooled thread is ever left in a pod's namespace.
    """

    def work() -> T:
        join_namespace(netns, syscalls.CLONE_NEWNET)
        return fn()

    return _on_own_thread(f"netns:{netns.parent.parent.name[:12]}", work)


def new_netns(pin: Path, inside: Callable[[], None]) -> None:
    """Makes a network namespace, runs `inside` in it (the pod's net sysctls), then pins it at
    `pin`; on a throw-away thread, the only one ever in it (unshare changes the calling
    thread's namespace only). The namespace exists before any process of the pod does, so
    its network can be set up while the pod's shim starts."""

    def work() -> None:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        inside()
        _pin("/proc/thread-self/ns/net", pin)

    _on_own_thread(f"netns:{pin.parent.parent.name[:12]}", work)


def _on_own_thread(name: str, fn: Callable[[], T]) -> T:
    """`fn()` on a new thread that ends with it (whatever namespace it joined goes with it)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=work, name=name)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
