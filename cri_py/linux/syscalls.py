"""Thin ctypes wrappers over the syscalls Python 3.11 lacks: one function per call, errno turned
into an OSError that names the call and its arguments, no decisions.

Imported by the shim too, so it must stay light: ctypes, os and nothing of cri-py's.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MNT_FORCE = 0x1
MNT_DETACH = 0x2

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _load_libc() -> ctypes.CDLL:
    # glibc's soname first: ctypes.util.find_library may run ldconfig, slow for every shim.
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        return ctypes.CDLL(find_library("c"), use_errno=True)


_libc = _load_libc()
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.syscall.restype = ctypes.c_long


def _check(result: int, call: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return result


def _path(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare(flags={flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), f"setns(fd={fd}, nstype={nstype:#x})")


def mount(
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    _check(
        _libc.mount(
            _path(source),
            _path(target),
            None if fstype is None else fstype.encode(),
            flags,
            None if data is None else data.encode(),
        ),
        f"mount(source={source!s}, target={target!s}, fstype={fstype}, flags={flags:#x}, "
        f"data={data!r})",
    )


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    _check(_libc.umount2(_path(target), flags), f"umount2(target={target!s}, flags={flags:#x})")


_SYS_PIVOT_ROOT = 155  # x86_64; glibc has no wrapper
_SYS_PIVOT_ROOT_BY_MACHINE = {"x86_64": 155, "aarch64": 41}


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    number = _SYS_PIVOT_ROOT_BY_MACHINE.get(os.uname().machine, _SYS_PIVOT_ROOT)
    _check(
        _libc.syscall(number, _path(new_root), _path(put_old)),
        f"pivot_root(new_root={new_root!s}, put_old={put_old!s})",
    )


# rt_sigaction(2), raw: glibc's sigaction refuses the two signals it keeps for itself (32 and
# 33: thread cancellation and setxid) with EINVAL, yet a process can inherit them ignored
# (glibc's posix_spawn leaves them SIG_IGN in its children: `make` starts its recipes so), and
# an ignored signal survives execve.
_SYS_RT_SIGACTION_BY_MACHINE = {"x86_64": 13, "aarch64": 134}


class _KernelSigaction(ctypes.Structure):
    # The kernel's struct sigaction (handler, flags, restorer, mask), all zero for SIG_DFL.
    _fields_ = [
        ("handler", ctypes.c_ulong),
        ("flags", ctypes.c_ulong),
        ("restorer", ctypes.c_ulong),
        ("mask", ctypes.c_ulong),
    ]


def set_signal_action(signum: int, ignored: bool = False) -> None:
    """`signum` to SIG_DFL (or SIG_IGN) with rt_sigaction itself, glibc's reserved signals
    too."""
    number = _SYS_RT_SIGACTION_BY_MACHINE.get(os.uname().machine, 13)
    action = _KernelSigaction(handler=1 if ignored else 0)
    _check(
        _libc.syscall(
            ctypes.c_long(number),
            ctypes.c_int(signum),
            ctypes.byref(action),
            None,
            ctypes.c_size_t(8),  # the kernel's sigset_t: 64 signals
        ),
        f"rt_sigaction({signum}, {'SIG_IGN' if ignored else 'SIG_DFL'})",
    )


# <linux/mount.h>, <fcntl.h>: mount_setattr(2) (Linux 5.12), the same number on every arch.
_SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(
    path: str | os.PathLike[str],
    flags: int,
    attr_set: int,
    attr_clr: int = 0,
    propagation: int = 0,
    userns_fd: int = 0,
    dirfd: int = AT_FDCWD,
) -> None:
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    _check(
        _libc.syscall(
            ctypes.c_long(_SYS_MOUNT_SETATTR),
            ctypes.c_int(dirfd),
            _path(path),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        f"mount_setattr(path={path!s}, flags={flags:#x}, attr_set={attr_set:#x}, "
        f"attr_clr={attr_clr:#x})",
    )


# <linux/mount.h>: open_tree(2) and move_mount(2) (Linux 5.2), the same numbers on every arch.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4


def open_tree(path: str | os.PathLike[str], flags: int, dirfd: int = AT_FDCWD) -> int:
    """A file descriptor for the mount at `path`; with OPEN_TREE_CLONE a detached copy of it
    (the only kind of mount MOUNT_ATTR_IDMAP may be set on)."""
    return int(
        _check(
            _libc.syscall(
                ctypes.c_long(_SYS_OPEN_TREE),
                ctypes.c_int(dirfd),
                _path(path),
                ctypes.c_uint(flags),
            ),
            f"open_tree(path={path!s}, flags={flags:#x})",
        )
    )


def move_mount(fd: int, target: str | os.PathLike[str]) -> None:
    """Attaches the detached mount `fd` (from open_tree) at `target`."""
    _check(
        _libc.syscall(
            ctypes.c_long(_SYS_MOVE_MOUNT),
            ctypes.c_int(fd),
            b"",
            ctypes.c_int(AT_FDCWD),
            _path(target),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        f"move_mount(fd={fd}, target={target!s})",
    )


MOVE_MOUNT_T_EMPTY_PATH = 0x40


def move_mount_to_fd(fd: int, target_fd: int) -> None:
    """Attaches the detached mount `fd` onto what the descriptor `target_fd` (O_PATH is
    enough) refers to: no path is looked up."""
    _check(
        _libc.syscall(
            ctypes.c_long(_SYS_MOVE_MOUNT),
            ctypes.c_int(fd),
            b"",
            ctypes.c_int(target_fd),
            b"",
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
        ),
        f"move_mount(fd={fd}, target_fd={target_fd})",
    )


# <linux/openat2.h>: openat2(2) (Linux 5.6), the same number on every arch.
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def openat2(dirfd: int, path: str | os.PathLike[str], flags: int, mode: int, resolve: int) -> int:
    how = _OpenHow(flags, mode, resolve)
    return int(
        _check(
            _libc.syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dirfd),
                _path(path),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            ),
            f"openat2(dirfd={dirfd}, path={path!s}, flags={flags:#x}, resolve={resolve:#x})",
        )
    )


# <linux/magic.h>
PROC_SUPER_MAGIC = 0x9FA0
TMPFS_MAGIC = 0x01021994


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: every field a long (f_fsid two ints).
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


def fstatfs_type(fd: int) -> int:
    """The filesystem magic number (`f_type`) of what `fd` refers to (O_PATH is enough)."""
    result = _Statfs()
    _check(_libc.fstatfs(ctypes.c_int(fd), ctypes.byref(result)), f"fstatfs(fd={fd})")
    return int(result.f_type) & 0xFFFFFFFF


# <linux/stat.h>: statx(2), for the mount a descriptor is on in one system call.
STATX_MNT_ID = 0x1000
AT_EMPTY_PATH = 0x1000


class _Statx(ctypes.Structure):
    # struct statx is 256 bytes; read here: stx_mask (first) and stx_mnt_id (at byte 144).
    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("_before_mnt_id", ctypes.c_uint8 * 140),
        ("stx_mnt_id", ctypes.c_uint64),
        ("_after_mnt_id", ctypes.c_uint8 * 104),
    ]


def statx_mount_id(fd: int) -> int | None:
    """The id of the mount `fd` is on (the `mnt_id` of /proc/self/fdinfo and mountinfo's
    first field), None if the kernel does not report it (before 5.8)."""
    result = _Statx()
    _check(
        _libc.statx(
            ctypes.c_int(fd),
            b"",
            ctypes.c_int(AT_EMPTY_PATH),
            ctypes.c_uint(STATX_MNT_ID),
            ctypes.byref(result),
        ),
        f"statx(fd={fd})",
    )
    return int(result.stx_mnt_id) if result.stx_mask & STATX_MNT_ID else None


# <linux/bpf.h>: bpf(2) for cgroup v2 device programs.
_SYS_BPF_BY_MACHINE = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 0x2


class _BpfProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _BpfProgAttach(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


def _bpf(command: int, attr: ctypes.Structure) -> int:
    number = _SYS_BPF_BY_MACHINE.get(os.uname().machine, 321)
    return int(
        _libc.syscall(
            ctypes.c_long(number),
            ctypes.c_int(command),
            ctypes.byref(attr),
            ctypes.c_uint(ctypes.sizeof(attr)),
        )
    )


def bpf_prog_load(prog_type: int, instructions: bytes, license: str, name: str = "") -> int:
    """A file descriptor of the loaded program; the verifier's log is in the error."""
    if len(instructions) % 8:
        raise ValueError("eBPF instructions are 8 bytes each")
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_text = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(65536)
    attr = _BpfProgLoad(
        prog_type=prog_type,
        insn_cnt=len(instructions) // 8,
        insns=ctypes.addressof(code),
        license=ctypes.addressof(license_text),
        log_level=1,
        log_size=len(log),
        log_buf=ctypes.addressof(log),
        prog_name=name.encode()[:15],
    )
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd < 0:
        err = ctypes.get_errno()
        verifier = log.value.decode(errors="replace").strip()[-2000:]
        raise OSError(
            err,
            f"bpf(BPF_PROG_LOAD, type={prog_type}, insns={len(instructions) // 8}): "
            f"{os.strerror(err)}" + (f"; verifier: {verifier}" if verifier else ""),
        )
    return fd


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    attr = _BpfProgAttach(
        target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type, attach_flags=flags
    )
    _check(
        _bpf(BPF_PROG_ATTACH, attr),
        f"bpf(BPF_PROG_ATTACH, target_fd={target_fd}, prog_fd={prog_fd}, "
        f"attach_type={attach_type}, flags={flags:#x})",
    )


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(option, arg2, arg3, arg4, arg5),
        f"prctl(option={option}, arg2={arg2}, arg3={arg3}, arg4={arg4}, arg5={arg5})",
    )


# <linux/capability.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _to_mask(bits: frozenset[int] | set[int]) -> int:
    mask = 0
    for bit in bits:
        mask |= 1 << bit
    return mask


def _to_bits(mask: int) -> frozenset[int]:
    return frozenset(bit for bit in range(64) if mask >> bit & 1)


def capget() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    """This thread's (effective, permitted, inheritable) capability bit numbers."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget()")
    effective = data[0].effective | data[1].effective << 32
    permitted = data[0].permitted | data[1].permitted << 32
    inheritable = data[0].inheritable | data[1].inheritable << 32
    return _to_bits(effective), _to_bits(permitted), _to_bits(inheritable)


def capset(
    effective: frozenset[int], permitted: frozenset[int], inheritable: frozenset[int]
) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    masks = (_to_mask(effective), _to_mask(permitted), _to_mask(inheritable))
    for index, shift in enumerate((0, 32)):
        e, p, i = (mask >> shift & 0xFFFFFFFF for mask in masks)
        data[index].effective, data[index].permitted, data[index].inheritable = e, p, i
    _check(
        _libc.capset(ctypes.byref(header), data),
        f"capset(effective={sorted(effective)}, permitted={sorted(permitted)}, "
        f"inheritable={sorted(inheritable)})",
    )


# libseccomp, opened on first use (most shims never load a filter).
SCMP_FLTATR_CTL_NNP = 3


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_seccomp: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    global _seccomp
    if _seccomp is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as e:
            raise OSError(f"libseccomp.so.2 cannot be opened (install libseccomp2): {e}") from e
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.restype = None
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(ScmpArgCmp),
        ]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        _seccomp = lib
    return _seccomp


def open_libseccomp() -> None:
    """Opens libseccomp now: a process about to leave the host's filesystem (pivot_root,
    setns into a container's mount namespace) must do it first."""
    _libseccomp()


def _check_negative(result: int, call: str) -> int:
    """libseccomp returns -errno instead of setting errno."""
    if result < 0:
        raise OSError(-result, f"{call}: {os.strerror(-result)}")
    return result


def seccomp_init(default_action: int) -> int:
    ctx = _libseccomp().seccomp_init(default_action)
    if not ctx:
        raise OSError(0, f"seccomp_init(default_action={default_action:#x}) failed")
    return int(ctx)


def seccomp_release(ctx: int) -> None:
    _libseccomp().seccomp_release(ctx)


def seccomp_arch_resolve_name(name: str) -> int:
    """An architecture token; 0 for a name libseccomp does not know."""
    return int(_libseccomp().seccomp_arch_resolve_name(name.encode()))


def seccomp_arch_add(ctx: int, arch: int) -> None:
    _check_negative(_libseccomp().seccomp_arch_add(ctx, arch), f"seccomp_arch_add(arch={arch:#x})")


def seccomp_syscall_resolve_name(name: str) -> int:
    """The syscall's number (negative pseudo-numbers for multiplexed ones); -1
    (__NR_SCMP_ERROR) for a name libseccomp does not know."""
    return int(_libseccomp().seccomp_syscall_resolve_name(name.encode()))


def seccomp_rule_add_array(
    ctx: int, action: int, syscall: int, conditions: Sequence[tuple[int, int, int, int]]
) -> None:
    """`conditions`: (argument index, operator, datum_a, datum_b) each."""
    array = (ScmpArgCmp * max(1, len(conditions)))(*[ScmpArgCmp(*c) for c in conditions])
    _check_negative(
        _libseccomp().seccomp_rule_add_array(ctx, action, syscall, len(conditions), array),
        f"seccomp_rule_add_array(action={action:#x}, syscall={syscall}, "
        f"conditions={list(conditions)})",
    )


def seccomp_attr_set(ctx: int, attribute: int, value: int) -> None:
    _check_negative(
        _libseccomp().seccomp_attr_set(ctx, attribute, value),
        f"seccomp_attr_set(attribute={attribute}, value={value})",
    )


def seccomp_load(ctx: int) -> None:
    _check_negative(_libseccomp().seccomp_load(ctx), "seccomp_load()")
