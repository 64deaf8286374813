"""The container side of a launch: code that runs in a process the shim forked, enters the
container's namespaces, builds its filesystem view and finally execs the container's command.

Decisions come from the launch plan (`cri_py.oci.plan`); this module performs them with the
syscall edge and reports over a sync socket (SOCK_SEQPACKET, one message per send):
  child -> shim  b"R" + JSON {uid, gid, groups}  ready, blocked before execve
                 b"E" + text                     setup or execve failed (then it exits)
  shim -> child  b"S"                            go: execve (success closes the socket)
The "R" message carries SCM_CREDENTIALS, so the shim learns the init's PID in its own PID
namespace whatever namespace the init lives in. Nothing here returns: every path ends in
execve or os._exit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import stat
import struct
import termios
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from cri_py.linux import syscalls
from cri_py.oci.capabilities import CAP_SYS_ADMIN, before_exec, sets_for_user
from cri_py.oci.plan import (
    DeviceStep,
    IdRange,
    LaunchPlan,
    MountStep,
    Security,
    User,
    executable_candidates,
    host_id,
    idmapped_overlay,
    resolve_user,
)
from cri_py.oci.seccomp import SeccompFilter

EXIT_SETUP_FAILED = 1
# What a shell reports for "command could not be run"; the daemon records 128 (StartError).
EXIT_EXEC_FAILED = 127

NAMESPACE_FLAGS = {
    "network": syscalls.CLONE_NEWNET,
    "ipc": syscalls.CLONE_NEWIPC,
    "uts": syscalls.CLONE_NEWUTS,
    "pid": syscalls.CLONE_NEWPID,
    "mount": syscalls.CLONE_NEWNS,
    "user": syscalls.CLONE_NEWUSER,
}
# Device nodes of every container's /dev (major, minor), as runc creates them.
DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
    "core": "/proc/kcore",
}
_RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}
SYNC_FD = 3
CONTAINER_UMASK = 0o022


class LaunchError(Exception):
    """A step failed; the message (sent to the shim) names the step."""


def send_ready(sync: socket.socket, payload: Mapping[str, Any]) -> None:
    creds = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
    sync.sendmsg(
        [b"R" + json.dumps(payload).encode()],
        [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)],
    )


def fail(sync: socket.socket, message: str, code: int) -> NoReturn:
    with contextlib.suppress(OSError):
        sync.send(b"E" + message.encode(errors="replace")[:60000])
    os._exit(code)


def setup_stdio(stdio: Sequence[int], sync_fd: int) -> socket.socket:
    """fds 0-2 from `stdio`, the sync socket at fd 3, everything else closed."""
    sync_copy = os.dup(sync_fd)
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    os.dup2(sync_copy, SYNC_FD)
    os.closerange(SYNC_FD + 1, os.sysconf("SC_OPEN_MAX"))
    os.set_inheritable(SYNC_FD, False)
    return socket.socket(fileno=SYNC_FD)


def join_namespaces(join: Sequence[tuple[str, str]]) -> None:
    # Opened first, entered after: joining the mount namespace would hide the paths.
    fds = [(kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)) for kind, path in join]
    for kind, fd in fds:
        try:
            syscalls.setns(fd, NAMESPACE_FLAGS[kind])
        except OSError as e:
            raise LaunchError(f"joining the {kind} namespace: {e}") from e
        finally:
            os.close(fd)


def secure_join(root: str, path: str) -> str:
    """`path` inside `root`, with symlinks resolved as if `root` were `/` (so an image's
    symlink cannot make a mount land outside the rootfs)."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(candidate)
        except OSError:
            resolved.append(part)
            continue
        links += 1
        if links > 40:
            raise LaunchError(f"too many symlinks resolving {path} in the rootfs")
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p] + parts
    return os.path.join(root, *resolved)


def make_mount_point(target: str, source: str, is_bind: bool) -> None:
    file_source = False
    if is_bind:
        try:
            file_source = not stat.S_ISDIR(os.stat(source).st_mode)
        except FileNotFoundError:
            raise LaunchError(f"bind mount source {source} does not exist") from None
    if file_source:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    else:
        os.makedirs(target, exist_ok=True)


def idmapped_bind(source: str, target: str, userns_fd: int, recursive: bool) -> None:
    """Binds `source` at `target` as seen through the user namespace `userns_fd` (host ID
    H + n shows as container ID n). Only a detached clone may get MOUNT_ATTR_IDMAP, so the
    clone is made, idmapped, then attached."""
    recursion = syscalls.AT_RECURSIVE if recursive else 0
    tree = syscalls.open_tree(
        source, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | recursion
    )
    try:
        syscalls.mount_setattr(
            "",
            syscalls.AT_EMPTY_PATH | recursion,
            syscalls.MOUNT_ATTR_IDMAP,
            userns_fd=userns_fd,
            dirfd=tree,
        )
        syscalls.move_mount(tree, target)
    finally:
        os.close(tree)


def stage_idmapped_layers(
    step: MountStep,
    staging: str,
    userns_fd: int,
    uid_mappings: tuple[IdRange, ...],
    gid_mappings: tuple[IdRange, ...],
) -> MountStep:
    """An overlay step rewritten to stack idmapped clones of its layers (attached under
    `staging`, on the private mount beside the rootfs: they go with the mount namespace).
    An overlay itself cannot be idmapped (EINVAL); its layers can (Linux 5.19)."""
    layers, step, upper = idmapped_overlay(step, staging)
    for source, target in layers:
        os.makedirs(target, exist_ok=True)
        idmapped_bind(source, target, userns_fd, recursive=False)
    if upper:
        os.chown(upper, host_id(uid_mappings, 0), host_id(gid_mappings, 0))
    return step


def perform_mount(step: MountStep, target: str, userns_fd: int = -1) -> None:
    if step.fstype == "cgroup":
        # The container's cgroup view is the cgroups issue's (issue 7): until it lands,
        # /sys/fs/cgroup stays the empty directory of the container's fresh sysfs.
        return
    if step.is_bind and step.idmap:
        if userns_fd < 0:
            raise LaunchError(f"idmapped mount at {step.destination} without a user namespace")
        idmapped_bind(step.source, target, userns_fd, bool(step.flags & syscalls.MS_REC))
        if step.remount_flags:
            flags = step.remount_flags | _locked_flags(target)
            syscalls.mount(None, target, None, flags)
    elif step.is_bind:
        syscalls.mount(step.source, target, None, step.flags & (syscalls.MS_BIND | syscalls.MS_REC))
        if step.remount_flags:
            flags = step.remount_flags | _locked_flags(target)
            syscalls.mount(None, target, None, flags)
    else:
        syscalls.mount(step.source, target, step.fstype, step.flags, step.data or None)
    if step.recursive_readonly:
        # A read-only bind remount covers the top mount only; submounts need mount_setattr.
        syscalls.mount_setattr(target, syscalls.AT_RECURSIVE, syscalls.MOUNT_ATTR_RDONLY)
    if step.propagation:
        syscalls.mount(None, target, None, step.propagation)


def mount_sub_path(step: MountStep, target: str, staging: str) -> None:
    """An image volume's sub path: the overlay is mounted at `staging` (beside the rootfs, on
    the private mount the launcher made of it, so nothing reaches the host; pivot_root leaves
    it behind) and the sub path, resolved inside it, bound read-only at `target`."""
    os.makedirs(staging, exist_ok=True)
    syscalls.mount(step.source, staging, step.fstype, step.flags, step.data or None)
    source = secure_join(staging, step.sub_path)
    if not os.path.lexists(source):
        raise LaunchError(f"image volume sub path {step.sub_path!r} does not exist in the image")
    make_mount_point(target, source, True)
    syscalls.mount(source, target, None, syscalls.MS_BIND)
    remount = syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
    syscalls.mount(None, target, None, remount | _locked_flags(target))
    if step.propagation:
        syscalls.mount(None, target, None, step.propagation)


def mount_cgroups(step: MountStep, target: str, sources: Sequence[tuple[str, str]]) -> None:
    """The container's /sys/fs/cgroup (cgroup v1, as runc does it): a tmpfs holding one dir per
    hierarchy, each a bind mount of the container's own cgroup there, read-only unless the
    spec says rw (privileged). On v2, the container's cgroup dir itself. Runs before
    pivot_root, so the host's hierarchies are still in reach."""
    if not sources:
        return  # cgroups not managed: the empty dir of the container's sysfs stays
    readonly = bool(step.flags & syscalls.MS_RDONLY)
    lockable = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    if len(sources) == 1 and not sources[0][0]:  # cgroup v2
        _bind_cgroup(sources[0][1], target, readonly, lockable)
        return
    syscalls.mount("tmpfs", target, "tmpfs", lockable, "mode=755")
    for name, source in sources:
        os.makedirs(os.path.join(target, name), exist_ok=True)
        _bind_cgroup(source, os.path.join(target, name), readonly, lockable)
        controllers = name.split(",")
        if len(controllers) > 1:  # cpu,cpuacct: also reachable as cpu and cpuacct
            for controller in controllers:
                link = os.path.join(target, controller)
                if not os.path.lexists(link):
                    os.symlink(name, link)
    if readonly:
        flags = syscalls.MS_REMOUNT | syscalls.MS_RDONLY | lockable
        syscalls.mount(None, target, None, flags, "mode=755")


def _bind_cgroup(source: str, target: str, readonly: bool, flags: int) -> None:
    syscalls.mount(source, target, None, syscalls.MS_BIND)
    remount = syscalls.MS_REMOUNT | syscalls.MS_BIND | flags
    syscalls.mount(None, target, None, remount | (syscalls.MS_RDONLY if readonly else 0))


def _locked_flags(path: str) -> int:
    """Flags a remount must keep or the kernel refuses it (EPERM): nosuid/nodev/noexec/...
    already on the mount. statvfs's ST_* bits are the MS_* bits for these."""
    lockable = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    return os.statvfs(path).f_flag & lockable


def _mount_point_of(path: str) -> str:
    """The mount point `path` lives on (the longest mount point that is a prefix of it)."""
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split(" ")[4].encode().decode("unicode_escape")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(
                best
            ):
                best = point
    return best


def populate_dev(root: str) -> None:
    dev = os.path.join(root, "dev")
    if not os.path.isdir(dev):
        return
    old = os.umask(0)
    try:
        for name, (major, minor) in DEVICES.items():
            path = os.path.join(dev, name)
            if not os.path.lexists(path):
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        for name, target in DEV_LINKS.items():
            path = os.path.join(dev, name)
            if not os.path.lexists(path):
                os.symlink(target, path)
    finally:
        os.umask(old)


def create_devices(root: str, devices: Sequence[DeviceStep]) -> None:
    """The spec's device nodes, as the host's are (type, numbers, mode, owner). Made, not
    bound: /dev is the container's own tmpfs, and a node there cannot reach the host's /dev."""
    old = os.umask(0)
    try:
        for device in devices:
            # The last component is not followed: a default link (/dev/ptmx -> pts/ptmx) is
            # replaced, not what it points to.
            parent = secure_join(root, os.path.dirname(device.path))
            target = os.path.join(parent, os.path.basename(device.path))
            os.makedirs(parent, exist_ok=True)
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)  # a default node the client replaces (its own /dev/null...)
            mode = (device.file_mode & 0o7777) | kind[device.type]
            os.mknod(target, mode, os.makedev(device.major, device.minor))
            os.chown(target, device.uid, device.gid)
    finally:
        os.umask(old)


def prepare_rootfs(
    plan: LaunchPlan, rootfs_mounts: Sequence[MountStep], userns_fd: int = -1
) -> None:
    """Inside the new mount namespace: the rootfs, the spec's mounts, then pivot_root. With
    a user namespace (`userns_fd`), overlays stack idmapped layers and idmap binds use it."""
    # rslave (the default): host mounts made later still reach rslave volumes, nothing
    # mounted here reaches the host. rshared keeps the tree the host's peer, for rshared
    # volumes; then the rootfs's parent must be private, or the overlay below would appear
    # on the host too (and pivot_root refuses a shared parent).
    syscalls.mount(None, "/", None, plan.rootfs_propagation)
    root = plan.rootfs
    syscalls.mount(None, _mount_point_of(root), None, syscalls.MS_PRIVATE)
    idmapped_dir = os.path.join(os.path.dirname(root), "idmapped")
    for step in rootfs_mounts:
        try:
            if userns_fd >= 0 and step.fstype == "overlay":
                step = stage_idmapped_layers(
                    step,
                    os.path.join(idmapped_dir, "rootfs"),
                    userns_fd,
                    plan.uid_mappings,
                    plan.gid_mappings,
                )
            syscalls.mount(step.source, root, step.fstype, step.flags, step.data or None)
        except OSError as e:
            raise LaunchError(f"mounting the rootfs at {root}: {e}") from e
    for index, step in enumerate(plan.mounts):
        target = secure_join(root, step.destination)
        try:
            if userns_fd >= 0 and step.fstype == "overlay":
                step = stage_idmapped_layers(
                    step,
                    os.path.join(idmapped_dir, str(index)),
                    userns_fd,
                    plan.uid_mappings,
                    plan.gid_mappings,
                )
            if step.sub_path:
                staging = os.path.join(os.path.dirname(root), "image-volumes", str(index))
                mount_sub_path(step, target, staging)
                continue
            make_mount_point(target, step.source, step.is_bind)
            if step.fstype == "cgroup":
                mount_cgroups(step, target, plan.cgroup_mounts)
            else:
                perform_mount(step, target, userns_fd)
        except OSError as e:
            raise LaunchError(f"mount {step.source} at {step.destination}: {e}") from e
    populate_dev(root)
    try:
        create_devices(root, plan.devices)
    except OSError as e:
        raise LaunchError(f"creating device nodes: {e}") from e
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
    # only the new root (runc's trick: no put_old directory needed in the image).
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", syscalls.MNT_DETACH)
    os.chdir("/")


def finish_mounts(plan: LaunchPlan) -> None:
    """After pivot_root: /proc (from inside the PID namespace), masked and read-only paths."""
    for step in plan.late_mounts:
        target = secure_join("/", step.destination)
        try:
            os.makedirs(target, exist_ok=True)
            perform_mount(step, target)
        except OSError as e:
            raise LaunchError(f"mount {step.fstype} at {step.destination}: {e}") from e
    for path in plan.masked_paths:
        try:
            if os.path.isdir(path):
                syscalls.mount("tmpfs", path, "tmpfs", syscalls.MS_RDONLY)
            else:
                syscalls.mount("/dev/null", path, None, syscalls.MS_BIND)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise LaunchError(f"masking {path}: {e}") from e
    for path in plan.readonly_paths:
        try:
            syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REC)
            flags = syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
            syscalls.mount(None, path, None, flags | _locked_flags(path))
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise LaunchError(f"making {path} read-only: {e}") from e
    if plan.readonly_rootfs:
        flags = syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
        syscalls.mount(None, "/", None, flags)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def set_rlimits(rlimits: Sequence[tuple[str, int, int]]) -> None:
    for name, soft, hard in rlimits:
        kind = _RLIMITS.get(name)
        if kind is None:
            raise LaunchError(f"unknown rlimit {name}")
        _, current_hard = resource.getrlimit(kind)
        # Raising a hard limit needs CAP_SYS_RESOURCE, which this runtime may lack: clamp.
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(kind, (soft, hard))


def become(user: User, cwd: str, security: Security | None = None) -> None:
    """Switches to the container's user with its capabilities. The bounding set is cut first
    (that needs CAP_SETPCAP, which the target user may not keep); PR_SET_KEEPCAPS keeps the
    permitted set across setuid, and capset then sets the final sets, plus CAP_SYS_ADMIN until
    execve when a seccomp filter is to be loaded without no_new_privs (see `before_exec`);
    ambient capabilities are raised last (they need permitted and inheritable)."""
    # The working dir is made as root (an image may lack it), entered as the user.
    os.makedirs(cwd, exist_ok=True)
    capabilities = security.capabilities if security is not None else None
    if capabilities is not None:
        assert security is not None
        _, held, _ = syscalls.capget()
        last = _last_capability()
        for bit in range(last + 1):
            if bit not in capabilities.bounding:
                syscalls.prctl(syscalls.PR_CAPBSET_DROP, bit)
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
    os.setgroups(list(user.additional_gids))
    os.setgid(user.gid)
    os.setuid(user.uid)
    if capabilities is not None:
        assert security is not None
        keep = {CAP_SYS_ADMIN} if security.seccomp and not security.no_new_privileges else set()
        final = before_exec(sets_for_user(capabilities, user.uid), keep, held)
        syscalls.capset(final.effective, final.permitted, final.inheritable)
        for bit in sorted(final.ambient):
            syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, bit)
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 0)
    os.chdir(cwd)


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def load_seccomp(rules: SeccompFilter, no_new_privileges: bool) -> None:
    """Compiles and loads the filter with libseccomp. Syscall names this libseccomp does not
    know are skipped (a profile may name newer ones, as runc allows). Without no_new_privs the
    kernel wants CAP_SYS_ADMIN, which `become` kept until now."""
    ctx = syscalls.seccomp_init(rules.default_action)
    try:
        # We set no_new_privs ourselves when the spec asks; libseccomp would always set it.
        syscalls.seccomp_attr_set(ctx, syscalls.SCMP_FLTATR_CTL_NNP, 0)
        for name in rules.architectures:
            token = syscalls.seccomp_arch_resolve_name(name)
            if token == 0:
                continue
            try:
                syscalls.seccomp_arch_add(ctx, token)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        for rule in rules.rules:
            number = syscalls.seccomp_syscall_resolve_name(rule.syscall)
            if number == -1:
                continue
            conditions = [(c.index, c.op, c.value, c.value_two) for c in rule.conditions]
            syscalls.seccomp_rule_add_array(ctx, rule.action, number, conditions)
        syscalls.seccomp_load(ctx)
    finally:
        syscalls.seccomp_release(ctx)


def lock_down(security: Security) -> None:
    """The last steps before execve: no_new_privs, then the seccomp filter (after it, only the
    syscalls the container may make are left to make)."""
    if security.no_new_privileges:
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    if security.seccomp is not None:
        load_seccomp(security.seccomp, security.no_new_privileges)


def exec_command(args: Sequence[str], env: Sequence[str], path: str | None) -> str:
    """execve's the command (never returns on success); the error text otherwise."""
    environ = dict(e.partition("=")[::2] for e in env)
    denied = ""
    for candidate in executable_candidates(args[0], path):
        try:
            os.execve(candidate, list(args), environ)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as e:
            denied = f"exec {candidate}: {e.strerror}"
        except OSError as e:
            return f"exec {candidate}: {e.strerror}"
    if denied:
        return denied
    if "/" in args[0]:
        return f'exec: "{args[0]}": stat {args[0]}: no such file or directory'
    return f'exec: "{args[0]}": executable file not found in $PATH'


def attach_terminal() -> None:
    os.setsid()
    if os.isatty(0):
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _parent_of_init(child: int, sync: socket.socket, mirror_exit: bool) -> NoReturn:
    """The process that forked the init into its PID namespace. Normally it just leaves and
    the shim (a subreaper) adopts the init. But when the shim's children live in the pod's PID
    namespace, the kernel gives orphans to that namespace's init, not to the shim: then this
    process stays, waits for the init and exits with its status, for the shim to reap."""
    if not mirror_exit:
        os._exit(0)
    sync.close()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def run_init(
    plan: LaunchPlan,
    rootfs_mounts: Sequence[MountStep],
    stdio: Sequence[int],
    sync_fd: int,
    mirror_exit: bool = False,
) -> NoReturn:
    """The container's init, from the shim's fork to execve. Never returns."""
    sync = setup_stdio(stdio, sync_fd)
    # The daemon's umask (077) would make mount points and the working dir unreadable to
    # other users, and be the container's own: OCI's (and runc's) default is 022.
    os.umask(CONTAINER_UMASK)
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if plan.security.seccomp is not None:
            syscalls.open_libseccomp()  # from the host, before the rootfs replaces it
        # Opened now: after pivot_root the pin's path is out of reach.
        userns_fd = -1
        if plan.user_namespace:
            userns_fd = os.open(plan.user_namespace, os.O_RDONLY | os.O_CLOEXEC)
        join_namespaces(plan.join)
        flags = syscalls.CLONE_NEWNS if plan.new_mount_ns else 0
        if plan.new_pid_ns:
            flags |= syscalls.CLONE_NEWPID
        if flags:
            syscalls.unshare(flags)
        if plan.forks_for_pid:
            child = os.fork()
            if child != 0:
                _parent_of_init(child, sync, mirror_exit)
        attach_terminal()
        prepare_rootfs(plan, rootfs_mounts, userns_fd)
        finish_mounts(plan)
        user = resolve_user(plan.user, _read("/etc/passwd"), _read("/etc/group"))
        set_rlimits(plan.rlimits)
        if userns_fd >= 0:
            # Last: every mount above needed the host's root (idmapped mounts, /proc of a PID
            # namespace the host's user namespace owns). From here on this process is root of
            # the pod's user namespace, with all its capabilities there and none outside.
            try:
                syscalls.setns(userns_fd, syscalls.CLONE_NEWUSER)
            except OSError as e:
                raise LaunchError(f"joining the pod's user namespace: {e}") from e
            os.close(userns_fd)
        become(user, plan.cwd, plan.security)
        send_ready(sync, {"uid": user.uid, "gid": user.gid, "groups": list(user.additional_gids)})
    except Exception as e:
        fail(sync, f"container setup: {e}", EXIT_SETUP_FAILED)
    try:
        go = sync.recv(16)
    except OSError:
        go = b""
    if go != b"S":
        os._exit(EXIT_SETUP_FAILED)  # the shim gave up on us (remove before start)
    try:
        lock_down(plan.security)
    except Exception as e:
        fail(sync, f"container setup: {e}", EXIT_SETUP_FAILED)
    fail(sync, exec_command(plan.args, plan.env, plan.env_value("PATH")), EXIT_EXEC_FAILED)


def run_exec(
    join: Sequence[tuple[str, str]],
    user: User,
    cwd: str,
    args: Sequence[str],
    env: Sequence[str],
    stdio: Sequence[int],
    sync_fd: int,
    security: Security | None = None,
    tty: bool = False,
) -> NoReturn:
    """A process in a running container's namespaces (ExecSync), with the container's user,
    capabilities, no_new_privs and seccomp filter. This process enters them,
    forks the command and waits for it, exiting with its status: the command lives in the
    container's PID namespace, where only we (not the shim) can reap it."""
    sync = setup_stdio(stdio, sync_fd)
    os.umask(CONTAINER_UMASK)
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if security is not None and security.seccomp is not None:
            syscalls.open_libseccomp()  # from the host, before the container's mounts
        join_namespaces(join)
    except Exception as e:
        fail(sync, f"exec setup: {e}", EXIT_SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if tty:
                # stdin is the slave of a terminal the daemon allocated: make it ours.
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            become(user, cwd, security)
            send_ready(sync, {})
        except Exception as e:
            fail(sync, f"exec setup: {e}", EXIT_SETUP_FAILED)
        try:
            lock_down(security or Security())
        except Exception as e:
            os.write(2, f"exec setup: {e}\n".encode(errors="replace"))
            os._exit(EXIT_SETUP_FAILED)
        path = dict(entry.partition("=")[::2] for entry in env).get("PATH")
        # As a shell would: the reason on stderr, 127 (126 when not executable).
        message = exec_command(args, env, path)
        os.write(2, message.encode(errors="replace") + b"\n")
        os._exit(126 if "permission denied" in message.lower() else EXIT_EXEC_FAILED)
    sync.close()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)
