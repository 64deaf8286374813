"""The container side of a launch: code that runs in a process the shim forked, enters the
container's namespaces, builds its filesystem view and finally execs the container's command.

Decisions come from the launch plan (`cri_py.oci.plan`); this module performs them with the
syscall edge (what to execve and the image's user files: `programs`) and reports over a sync
socket (SOCK_SEQPACKET, one message per send):
  child -> shim  b"P"                            the process that will exec exists
                 b"H"                            mounts made, before pivot_root: run the
                                                 create hooks (only when the spec has some)
                 b"R" + JSON {uid, gid, groups,  ready, blocked before execve
                   oom_score_adj}
                 b"E" + text                     setup or execve failed (then it exits)
                 b"K" + text                     an OCI hook failed (then it exits)
  shim -> child  b"C" + JSON {id, pid, bundle}   the runtime's hooks ran: go on
                 b"S" [+ JSON {id, pid, bundle}] go: execve (success closes the socket);
                                                 the JSON when startContainer hooks exist
"P" and "R" carry SCM_CREDENTIALS, so the shim learns the PID in its own PID namespace
whatever namespace the process lives in ("P" as soon as it is forked: a setup that hangs or
times out is killed there, not only in the intermediate process that forked it). Nothing here
returns: every path ends in execve or os._exit.

What a setup process promises (docs/ARCHITECTURE.md, "Isolation rules"): it is non-dumpable
from fork to execve (no ptrace, /proc/<pid>/mem, pidfd_getfd or /proc/<pid>/exe from a
container), cuts the bounding set before it can be seen in a PID namespace it shares, joins
the container's cgroups and takes its oom_score_adj before it touches the image, reads image
files only if regular and bounded, and hands over a process that starts as on a plain host:
default signal actions, an empty signal mask, umask 022, no descriptor but 0-2 and a working
directory inside the root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import resource
import signal
import socket
import struct
import termios
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cri_py.linux import syscalls
from cri_py.linux.rootfs import make_directory
from cri_py.oci import hooks as oci_hooks
from cri_py.oci.capabilities import CAP_SYS_ADMIN, before_exec, sets_for_user
from cri_py.oci.plan import (
    LaunchPlan,
    MountStep,
    Security,
    User,
    with_home,
)
from cri_py.oci.seccomp import SeccompFilter
from cri_py.shim.hooks import HookFailed, run_hooks
from cri_py.shim.mounts import finish_mounts, prepare_rootfs
from cri_py.shim.programs import (
    LaunchError,
    exec_program,
    find_program,
    image_user,
    read_image_file,
)

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
_RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}
SYNC_FD = 3
CONTAINER_UMASK = 0o022
# Above any descriptor number (close_range takes it): every descriptor from a point on.
_ALL_FDS = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    """What confines a container's processes before they touch the image: the cgroup.procs
    file of its cgroup in every hierarchy, and its oom_score_adj (None: the inherited one)."""

    cgroup_procs: tuple[str, ...] = ()
    oom_score_adj: int | None = None


def report_pid(sync: socket.socket) -> None:
    """b"P": the shim learns this process's PID (SCM_CREDENTIALS), to kill it if setup fails."""
    creds = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
    sync.sendmsg([b"P"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)])


def send_ready(sync: socket.socket, payload: Mapping[str, Any]) -> None:
    creds = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
    sync.sendmsg(
        [b"R" + json.dumps(payload).encode()],
        [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)],
    )


def fail(sync: socket.socket, message: str, code: int, kind: bytes = b"E") -> NoReturn:
    with contextlib.suppress(OSError):
        sync.send(kind + message.encode(errors="replace")[:60000])
    os._exit(code)


class HookStepFailed(Exception):
    """An OCI hook of the launch failed: reported as b"K", not as a setup error."""


def _hook_state(plan: LaunchPlan, reply: bytes, status: str) -> bytes:
    """The state JSON for the container's own hooks: the shim sent what only it knows (the
    init's PID in the runtime's PID namespace, the ID, the bundle); annotations are the plan's."""
    try:
        info = json.loads(reply)
        return oci_hooks.state(
            str(info["id"]), status, int(info["pid"]), str(info["bundle"]), plan.annotations
        )
    except (ValueError, KeyError, TypeError) as e:
        raise LaunchError(f"the shim's hook state is malformed: {e}") from e


def run_create_hooks(plan: LaunchPlan, sync: socket.socket) -> None:
    """Before pivot_root (the mounts are made): the shim runs prestart and createRuntime in the
    runtime's namespaces while this process waits, then the createContainer hooks run here, in
    the container's namespaces, their paths resolved in the runtime's view that this mount
    namespace still shows. A hook's child gets only its env and the state on stdin."""
    sync.send(b"H")
    reply = sync.recv(65536)
    if not reply.startswith(b"C"):
        raise LaunchError("the shim stopped the create while its hooks ran")
    if not plan.hooks.create_container:
        return
    state = _hook_state(plan, reply[1:], "creating")
    try:
        run_hooks("createContainer", plan.hooks.create_container, state)
    except HookFailed as e:
        raise HookStepFailed(str(e)) from e


def setup_stdio(stdio: Sequence[int], sync_fd: int) -> socket.socket:
    """fds 0-2 from `stdio`, the sync socket at fd 3, everything else closed."""
    sync_copy = os.dup(sync_fd)
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    os.dup2(sync_copy, SYNC_FD)
    # Not SC_OPEN_MAX: a descriptor above the soft limit (lowered after it was opened) counts.
    os.closerange(SYNC_FD + 1, _ALL_FDS)
    os.set_inheritable(SYNC_FD, False)
    return socket.socket(fileno=SYNC_FD)


def reset_signals() -> None:
    """Every signal back to its default action, none blocked: ignored signals survive execve,
    and Python ignores SIGPIPE and SIGXFSZ at start-up (then `seq 1 99999 | head -1` reports a
    broken pipe; the shim ignores SIGINT and SIGHUP). Handlers would be reset by execve, but a
    signal arriving before it must not run the shim's code in this process."""
    signal.set_wakeup_fd(-1)
    for signum in range(1, signal.NSIG):
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(signum, signal.SIG_DFL)
        except OSError:
            # glibc's own 32 and 33 (EINVAL from signal()): inherited ignored when cri-py was
            # started by a posix_spawn-ing parent such as make, so reset at the kernel.
            syscalls.set_signal_action(signum)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def cut_bounding_set(security: Security | None) -> None:
    """Drops from the bounding set what the container may not have. Done before a setup process
    can be seen in a PID namespace it shares with containers (an exec, an init in a pod-wide PID
    namespace); the permitted and effective sets stay whole until `become`, so mounts still
    work. Needs CAP_SETPCAP, which the container's user may not keep: done as root."""
    capabilities = security.capabilities if security is not None else None
    if capabilities is None:
        return
    for bit in range(last_capability() + 1):
        if bit not in capabilities.bounding:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, bit)


class HostFiles:
    """What a setup process opens while the host's `/` is still in view and uses after its
    namespaces changed: the host's /proc and the container's cgroup.procs files. Close-on-exec,
    and closed before the image is touched."""

    def __init__(self, limits: Limits) -> None:
        self.fds: list[int] = []
        try:
            self.proc = self._open("/proc", os.O_PATH | os.O_DIRECTORY)
            self.cgroup_procs = [self._open(p, os.O_WRONLY) for p in limits.cgroup_procs]
        except OSError as e:
            self.close()
            raise LaunchError(f"opening the container's cgroup: {e}") from e

    def _open(self, path: str, flags: int) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def apply_limits(limits: Limits, files: HostFiles) -> int | None:
    """Moves this process into the container's cgroups and gives it the container's
    oom_score_adj (its children inherit both), then closes `files`. Returns the score applied
    (maybe clamped, see `set_oom_score_adj`), None when none was asked for."""
    try:
        for fd in files.cgroup_procs:
            # "0" is the writer itself, whatever PID namespace it is in.
            os.write(fd, b"0")
        applied = None
        if limits.oom_score_adj is not None:
            applied = set_oom_score_adj(limits.oom_score_adj, files.proc)
        return applied
    except OSError as e:
        raise LaunchError(f"joining the container's cgroup: {e}") from e
    finally:
        files.close()


def set_oom_score_adj(value: int, proc_fd: int, pid: str = "self") -> int:
    """Sets /proc/<pid>/oom_score_adj (`proc_fd`: the /proc it is read in). Lowering a score
    needs CAP_SYS_RESOURCE, which this runtime may lack: then the process keeps the (higher)
    score it inherited, as the closest allowed value. Returns the value it has now (the daemon
    reports a clamp)."""
    path = f"{pid}/oom_score_adj"
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        with contextlib.suppress(PermissionError):
            os.write(fd, str(value).encode())
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


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
    # The working dir is made as root (an image may lack it), entered as the user. Resolved
    # in the root this process has now (the container's), by descriptor: an image's
    # WorkingDir of /proc/1/root/... or /proc/self/fd/N/.. must not reach a host directory.
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        workdir = make_directory(root, cwd)
    except OSError as e:
        raise LaunchError(f"working directory {cwd}: {e.strerror or e}") from e
    finally:
        os.close(root)
    try:
        _switch_user(user, security)
        os.fchdir(workdir)
    finally:
        os.close(workdir)


def _switch_user(user: User, security: Security | None) -> None:
    capabilities = security.capabilities if security is not None else None
    if capabilities is not None:
        assert security is not None
        _, held, _ = syscalls.capget()
        cut_bounding_set(security)
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


@functools.cache  # the kernel's: asked once per process (a launch cuts the bounding set twice)
def last_capability() -> int:
    """The highest capability this kernel knows, asked of the kernel itself (PR_CAPBSET_READ
    fails with EINVAL past it): /proc/sys/kernel/cap_last_cap would be read in the container's
    /proc, which a container may have covered with a file of its own."""
    last = 0
    while last < 63:
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_READ, last + 1)
        except OSError:
            break
        last += 1
    return last


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


def audit_descriptors() -> None:
    """The last setup step before the ready message (nothing opens a file after it):
    nothing of the launcher's may reach the container (CVE-2016-9962, CVE-2024-21626 were a
    host descriptor or a host working directory left to it). Every descriptor but 0-2 must be
    close-on-exec (the sync socket is, by design): one that is not is a bug here, and fails the
    launch. Whatever the container's /proc lists, every descriptor above the sync socket is
    then closed; and the working directory must be inside the root (getcwd fails with ENOENT
    for one outside it)."""
    try:
        fd_dir = os.open("/proc/thread-self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        names = []  # no /proc (a container that unmounted it): the closerange below holds
    else:
        try:
            names = os.listdir(fd_dir)
        finally:
            os.close(fd_dir)
    leaked = []
    for name in names:
        if not name.isdigit() or int(name) <= 2:
            continue
        fd = int(name)
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue  # the listing's own descriptor, closed since
        if not flags & fcntl.FD_CLOEXEC:
            try:
                target = os.readlink(f"/proc/thread-self/fd/{fd}")
            except OSError:
                target = "?"
            leaked.append(f"{fd} ({target})")
    if leaked:
        raise LaunchError(f"descriptors would leak into the container: {', '.join(leaked)}")
    os.closerange(SYNC_FD + 1, _ALL_FDS)
    try:
        os.getcwd()
    except FileNotFoundError:
        raise LaunchError("the working directory is outside the container's root") from None


def lock_down(security: Security) -> None:
    """The last steps before execve: no_new_privs, then the seccomp filter (after it, only the
    syscalls the container may make are left to make)."""
    if security.no_new_privileges:
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    if security.seccomp is not None:
        load_seccomp(security.seccomp, security.no_new_privileges)


def attach_terminal() -> None:
    os.setsid()
    if os.isatty(0):
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _parent_of_init(child: int, sync: socket.socket, mirror_exit: bool) -> NoReturn:
    """The process that forked the init into its PID namespace. Normally it just leaves and
    the shim (a subreaper) adopts the init. But when the shim's children live in the pod's PID
    namespace, the kernel gives orphans to that namespace's init, not to the shim: then this
    process stays (non-dumpable, holding nothing but /dev/null), waits for the init and exits
    with its status, for the shim to reap."""
    if not mirror_exit:
        os._exit(0)
    sync.close()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, _ALL_FDS)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def run_init(
    plan: LaunchPlan,
    rootfs_mounts: Sequence[MountStep],
    stdio: Sequence[int],
    sync_fd: int,
    mirror_exit: bool = False,
    limits: Limits = Limits(),
    born_in_pid_ns: bool = False,
) -> NoReturn:
    """The container's init, from the shim's fork to execve. Never returns. `born_in_pid_ns`:
    the shim forked this process as PID 1 of the container's new PID namespace; otherwise
    this process makes or enters it and forks the init (`_parent_of_init`)."""
    # First: until execve, nothing in a container may ptrace this process, read its memory,
    # take its descriptors or open its /proc/<pid>/exe (the host's interpreter).
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    sync = setup_stdio(stdio, sync_fd)
    # The daemon's umask (077) would make mount points and the working dir unreadable to
    # other users, and be the container's own: OCI's (and runc's) default is 022.
    os.umask(CONTAINER_UMASK)
    try:
        reset_signals()
        host = HostFiles(limits)
        # Before a PID namespace another container shares (the pod's) can show this process.
        cut_bounding_set(plan.security)
        if plan.security.seccomp is not None:
            syscalls.open_libseccomp()  # from the host, before the rootfs replaces it
        # Opened now: after pivot_root the pin's path is out of reach.
        userns_fd = -1
        if plan.user_namespace:
            userns_fd = os.open(plan.user_namespace, os.O_RDONLY | os.O_CLOEXEC)
        join_namespaces(plan.join)
        flags = syscalls.CLONE_NEWNS if plan.new_mount_ns else 0
        if plan.new_pid_ns and not born_in_pid_ns:
            flags |= syscalls.CLONE_NEWPID
        if flags:
            syscalls.unshare(flags)
        if plan.forks_for_pid and not born_in_pid_ns:
            child = os.fork()
            if child != 0:
                host.close()
                if userns_fd >= 0:
                    os.close(userns_fd)
                _parent_of_init(child, sync, mirror_exit)
        # This process is the init from here on: the shim can kill it if setup fails or hangs.
        report_pid(sync)
        # Confined before the image is touched: whatever the rootfs makes this process do,
        # it does in the container's cgroups, with the container's OOM score.
        oom_score_adj = apply_limits(limits, host)
        attach_terminal()
        before_pivot = None
        if plan.hooks.pause_before_pivot:
            before_pivot = functools.partial(run_create_hooks, plan, sync)
        prepare_rootfs(plan, rootfs_mounts, userns_fd, before_pivot)
        finish_mounts(plan)
        user, passwd = image_user(plan.user)
        env = with_home(plan.env, user.uid, passwd)
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
        ready: dict[str, Any] = {
            "uid": user.uid,
            "gid": user.gid,
            "groups": list(user.additional_gids),
        }
        if oom_score_adj is not None:
            ready["oom_score_adj"] = oom_score_adj
        audit_descriptors()
        send_ready(sync, ready)
    except HookStepFailed as e:
        fail(sync, str(e), EXIT_SETUP_FAILED, b"K")
    except Exception as e:
        fail(sync, f"container setup: {e}", EXIT_SETUP_FAILED)
    try:
        go = sync.recv(65536)
    except OSError:
        go = b""
    if go[:1] != b"S":
        os._exit(EXIT_SETUP_FAILED)  # the shim gave up on us (remove before start)
    try:
        program = find_program(plan.args, plan.env_value("PATH"))
        lock_down(plan.security)
        if plan.hooks.start_container:
            # After the container's own confinement (its user, capabilities, no_new_privs,
            # seccomp filter): the hook's path is the container's file, resolved in its root.
            state = _hook_state(plan, go[1:], "created")
            try:
                run_hooks("startContainer", plan.hooks.start_container, state)
            except HookFailed as e:
                raise HookStepFailed(str(e)) from e
    except HookStepFailed as e:
        fail(sync, str(e), EXIT_SETUP_FAILED, b"K")
    except Exception as e:
        fail(sync, f"container setup: {e}", EXIT_SETUP_FAILED)
    if isinstance(program, str):
        fail(sync, program, EXIT_EXEC_FAILED)
    fail(sync, exec_program(program, env), EXIT_EXEC_FAILED)


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
    limits: Limits = Limits(),
    rlimits: Sequence[tuple[str, int, int]] = (),
) -> NoReturn:
    """A process in a running container (ExecSync, exec streams), confined as its init is: its
    cgroups, OOM score, rlimits, user, capabilities, no_new_privs and seccomp filter. This
    process takes the limits, enters the namespaces, forks the command and waits for it,
    exiting with its status: the command lives in the container's PID namespace, where only we
    (not the shim) can reap it."""
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)  # as the init's (see run_init)
    sync = setup_stdio(stdio, sync_fd)
    os.umask(CONTAINER_UMASK)
    try:
        reset_signals()
        # The host's paths first (cgroup.procs, /proc): the namespaces below hide them. The
        # command forked below inherits the cgroups, the score and the limits.
        apply_limits(limits, HostFiles(limits))
        set_rlimits(rlimits)
        cut_bounding_set(security)  # before the container's PID namespace shows the command
        if security is not None and security.seccomp is not None:
            syscalls.open_libseccomp()  # from the host, before the container's mounts
        join_namespaces(join)
        # setns into the mount namespace moved the root and working directory to its root;
        # said again, so that nothing below can start from a host directory.
        os.chdir("/")
        env = with_home(env, user.uid, read_image_file("/etc/passwd")[0])
    except Exception as e:
        fail(sync, f"exec setup: {e}", EXIT_SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        try:
            report_pid(sync)
            os.setsid()
            if tty:
                # stdin is the slave of a terminal the daemon allocated: make it ours.
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            become(user, cwd, security)
            audit_descriptors()
            send_ready(sync, {})
        except Exception as e:
            fail(sync, f"exec setup: {e}", EXIT_SETUP_FAILED)
        try:
            path = dict(entry.partition("=")[::2] for entry in env).get("PATH")
            program = find_program(args, path)
            lock_down(security or Security())
        except Exception as e:
            os.write(2, f"exec setup: {e}\n".encode(errors="replace"))
            os._exit(EXIT_SETUP_FAILED)
        # As a shell would: the reason on stderr, 127 (126 when not executable).
        message = program if isinstance(program, str) else exec_program(program, env)
        os.write(2, message.encode(errors="replace") + b"\n")
        os._exit(126 if "permission denied" in message.lower() else EXIT_EXEC_FAILED)
    sync.close()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)
