"""What this kernel can do for containers, probed once: the Status RPC advertises only what
works here (kubelet then refuses, rather than silently weakens, what it cannot have)."""

from __future__ import annotations

import errno
import functools

from cri_py.linux import syscalls

# A path that cannot exist: the probe must reach the syscall's lookup, never change a mount.
_PROBE_PATH = "/proc/self/fd/-1/cri-py-probe"


@functools.cache
def recursive_read_only_mounts() -> bool:
    """mount_setattr(2) (Linux 5.12) exists: the launcher makes `rro` mounts with it. A kernel
    without it answers ENOSYS before looking the path up; one with it, ENOENT."""
    try:
        syscalls.mount_setattr(_PROBE_PATH, syscalls.AT_RECURSIVE, syscalls.MOUNT_ATTR_RDONLY)
    except OSError as e:
        return e.errno not in (errno.ENOSYS, errno.EPERM)
    return True
