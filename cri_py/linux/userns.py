"""Creating a user namespace with ID mappings, and namespaces owned by it.

A process cannot write its own maps with host IDs it does not hold, and the shim must stay the
host's root: so a forked helper unshares the user namespace, this (privileged) parent writes
its uid_map and gid_map, and the helper then unshares the namespaces that must belong to it
(a pod's net/IPC/UTS: then root in the pod may configure its own network and sysctls). The
caller joins or pins what it needs from /proc/<helper>/ns/ and releases the helper.

setgroups stays "allow": a privileged writer needs no "deny" to write gid_map, and containers
need setgroups(2) for their supplementary groups.
Imported by the shim: os and the syscall edge only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from cri_py.linux import syscalls


class UserNamespaceHelper:
    """A forked process inside a new, mapped user namespace (and the namespaces it unshared
    after the maps were written). `close()` lets it exit and reaps it."""

    def __init__(
        self,
        uid_map: str,
        gid_map: str,
        unshare_flags: int = 0,
        then: Callable[[], None] | None = None,
    ) -> None:
        """`then` runs in the helper, as root of the new user namespace, inside the namespaces
        it unshared: what only that root may do there (IPC sysctls of an IPC namespace a
        user namespace owns are writable by its root's uid alone, not by the host's root)."""
        to_child_r, to_child_w = os.pipe2(os.O_CLOEXEC)
        to_parent_r, to_parent_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(to_child_w)
            os.close(to_parent_r)
            _run_helper(to_child_r, to_parent_w, unshare_flags, then)
        os.close(to_child_r)
        os.close(to_parent_w)
        self.pid = pid
        self._release = to_child_w
        try:
            self._expect(to_parent_r, b"u", "unsharing the user namespace")
            _write_map(f"/proc/{pid}/uid_map", uid_map)
            _write_map(f"/proc/{pid}/gid_map", gid_map)
            os.write(to_child_w, b"m")
            self._expect(to_parent_r, b"n", "unsharing namespaces in the user namespace")
        except BaseException:
            self.close()
            raise
        finally:
            os.close(to_parent_r)

    def _expect(self, fd: int, token: bytes, step: str) -> None:
        message = b""
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            message += chunk
            if message == token:
                return
        if message.startswith(b"e"):
            raise OSError(f"user namespace helper: {step}: {message[1:].decode(errors='replace')}")
        raise OSError(f"user namespace helper: {step}: it exited without answering")

    def ns_path(self, kind: str) -> str:
        return f"/proc/{self.pid}/ns/{kind}"

    def close(self) -> None:
        if self._release >= 0:
            os.close(self._release)
            self._release = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)


def _write_map(path: str, text: str) -> None:
    # The kernel takes a map in one write(2) only.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    except OSError as e:
        raise OSError(e.errno, f"writing {path} ({text.strip()!r}): {e.strerror}") from e
    finally:
        os.close(fd)


def _run_helper(
    from_parent: int, to_parent: int, unshare_flags: int, then: Callable[[], None] | None
) -> None:
    """The helper's whole life; never returns."""
    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER)
        os.write(to_parent, b"u")
        if os.read(from_parent, 1) != b"m":
            os._exit(1)
        # The namespace's root for real (its host IDs), not the unmapped host root: files and
        # sysctls owned by that root are then ours. Capabilities in the namespace stay.
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        if unshare_flags:
            syscalls.unshare(unshare_flags)
        if then is not None:
            then()
        os.write(to_parent, b"n")
        os.close(to_parent)
        while os.read(from_parent, 64):
            pass
        os._exit(0)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            os.write(to_parent, b"e" + str(e).encode(errors="replace"))
        os._exit(1)
