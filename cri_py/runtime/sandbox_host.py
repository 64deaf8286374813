"""Host-side helpers of a pod sandbox that hold no state: its shim's process identity, finding
and killing a shim the daemon never recorded, the /dev/shm unmount, and the pod files
(hostname, hosts, resolv.conf) written in place. The bookkeeping is `SandboxService`'s.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

from cri_py.linux import syscalls
from cri_py.log import get_logger
from cri_py.model.sandbox import ShimInfo
from cri_py.runtime import pod_files
from cri_py.shim.client import ShimProcess

log = get_logger("cri_py.sandboxes")

HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def shim_process(info: ShimInfo) -> ShimProcess:
    return ShimProcess(pid=info.pid, start_time=info.start_time, init_pid=info.init_pid)


def _shim_processes(bundle: Path) -> list[int]:
    """PIDs started as `python -m cri_py.shim <bundle>`: the shim, its pod-init, a child not
    exec'd yet (a shim forked by the template takes that command line too)."""
    target = os.fsencode(str(bundle))
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                args = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"cri_py.shim" in args and target in args:
                found.append(int(name))
    return found


def kill_unrecorded_shim(bundle: Path, timeout: float = 10.0) -> None:
    """SIGKILLs a shim the daemon started but never recorded, until none is left for a
    while: one still starting may fork after a first look. Its exit.json must not land in
    a bundle dir already removed, so this returns once they are gone."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        pids = _shim_processes(bundle)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if pids:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.5:
            return
        time.sleep(0.05)
    log.error("a shim of a half-built sandbox would not die", bundle=str(bundle))


def unmount(path: Path) -> None:
    try:
        syscalls.umount2(path, syscalls.MNT_DETACH)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise


def write_pod_file(path: Path, text: str) -> None:
    """In place (a container's bind mount holds the inode), with the mode containerd gives it."""
    path.write_text(text)
    path.chmod(pod_files.FILE_MODE)


def read_host_resolv_conf() -> str:
    try:
        return HOST_RESOLV_CONF.read_text()
    except FileNotFoundError:
        return ""
