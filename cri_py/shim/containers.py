"""The shim's containers: launch (create/start), signals, stdio into CRI log files and
attached clients, exits recorded in each container's dir. Exec sessions are `execs`'s, the
fork and sync socket of a launch `sync`'s; requests and replies are `messages`'s types.

Blocking is bounded: create and start wait on the child's sync socket (milliseconds, with a
timeout); everything else is driven by the shim's selector loop through `Hooks`. Stdlib only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pty
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_py.linux.poll import wait_readable
from cri_py.oci import hooks as oci_hooks
from cri_py.oci.plan import LaunchPlan, User, build_plan, mount_step
from cri_py.shim import launcher, messages
from cri_py.shim.execs import Execs, Respond
from cri_py.shim.hooks import HookFailed, RuntimeNamespaces, run_hooks, run_hooks_logged
from cri_py.shim.logs import LogLines
from cri_py.shim.sync import (
    SYNC_TIMEOUT_SECONDS,
    ContainerError,
    SetupProcesses,
    fork_child,
    kill_and_reap,
    nonblocking,
    receive_ready,
    sync_pair,
)

# In a container's dir: the OCI spec the daemon wrote (the bundle's), and how it ended.
OCI_SPEC_FILE = "config.json"
CONTAINER_EXIT_FILE = "exit.json"


@dataclass
class Hooks:
    add_reader: Callable[[int, Callable[[], None]], None]
    remove_reader: Callable[[int], None]
    emit: Callable[[messages.Exited], None]


class LogFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        if path:
            self.open()

    def open(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def write(self, data: bytes) -> None:
        if self.fd >= 0 and data:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]

    def reopen(self) -> None:
        """kubelet's rotation renamed the file: the old one stops growing, a new one starts."""
        self.close()
        if self.path:
            self.open()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_exit_file(path: Path, record: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(record, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def exit_reason(code: int, oom_kills: int = 0) -> str:
    """kubelet's words: OOMKilled when the kernel's OOM killer hit the container's cgroup
    (its init, or a child whose death made the init fail)."""
    if code == 0:
        return "Completed"
    return "OOMKilled" if oom_kills > 0 else "Error"


def oom_kills(path: str) -> int:
    """The `oom_kill` counter of a memory.oom_control (v1) or memory.events (v2) file. The
    kernel raises it before it sends SIGKILL, so a reaper that saw the exit sees the count."""
    if not path:
        return 0
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Container:
    id: str
    bundle: Path
    plan: LaunchPlan
    log: LogFile
    pid: int = 0
    status: str = "created"
    created_at: int = 0
    started_at: int = 0
    exit: messages.ExitInfo | None = None
    user: User = field(default_factory=User)
    sync: socket.socket | None = None
    stdin_fd: int = -1
    outputs: dict[int, LogLines] = field(default_factory=dict)
    # Attached clients' pipes (the daemon's, non-blocking) and the stream each one copies.
    attached: dict[int, str] = field(default_factory=dict)
    # The cgroup.procs files of the container's cgroup (one per hierarchy) and the file with
    # its `oom_kill` counter (memory.oom_control on v1, memory.events on v2).
    cgroup_procs: tuple[str, ...] = ()
    oom_file: str = ""
    # The oom_score_adj its init got (None: none was asked for); every exec gets it too.
    oom_score_adj: int | None = None

    def view(self) -> messages.ContainerView:
        user = messages.ProcessUser(self.user.uid, self.user.gid, self.user.additional_gids)
        return messages.ContainerView(
            self.id, self.pid, self.status, self.created_at, self.started_at, self.exit, user
        )


def _warn(message: str) -> None:
    print(f"shim: {message}", file=sys.stderr, flush=True)


class Containers:
    def __init__(
        self,
        hooks: Hooks,
        pod_pid_namespace: bool = False,
        runtime_namespaces: RuntimeNamespaces | None = None,
    ) -> None:
        self._hooks = hooks
        # Where OCI hooks of the runtime's namespaces run (None: this process's own).
        self._runtime = runtime_namespaces
        # Our children live in the pod's PID namespace: see launcher._parent_of_init.
        self._mirror_exits = pod_pid_namespace
        self._containers: dict[str, Container] = {}
        self._by_pid: dict[int, str] = {}
        self._execs = Execs(hooks)

    def get(self, container_id: str) -> Container:
        container = self._containers.get(container_id)
        if container is None:
            raise ContainerError("not_found", f"container {container_id} not found in this shim")
        return container

    def list(self) -> tuple[messages.ContainerView, ...]:
        return tuple(c.view() for c in self._containers.values())

    # --- create / start -------------------------------------------------------------------

    def create(self, request: messages.Create) -> messages.ContainerView:
        container_id = request.id
        if container_id in self._containers:
            raise ContainerError("exists", f"container {container_id} already exists")
        bundle = Path(request.bundle)
        spec = json.loads((bundle / OCI_SPEC_FILE).read_text())
        try:
            plan = build_plan(spec)
            plan = dataclasses.replace(plan, cgroup_mounts=request.cgroup_mounts)
            rootfs = [mount_step({**m, "destination": plan.rootfs}) for m in request.rootfs]
        except ValueError as e:
            raise ContainerError("invalid", str(e)) from e
        with contextlib.ExitStack() as undo:
            log = LogFile(request.log_path)
            undo.callback(log.close)
            child_fds: list[int] = []
            container = Container(container_id, bundle, plan, log, created_at=time.time_ns())
            if plan.terminal:
                master, slave = pty.openpty()
                undo.callback(os.close, master)
                child_fds = [slave, slave, slave]
                container.outputs[nonblocking(master)] = LogLines("stdout")
                if request.stdin:
                    container.stdin_fd = os.dup(master)
            else:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                undo.callback(os.close, out_r)
                undo.callback(os.close, err_r)
                container.outputs[nonblocking(out_r)] = LogLines("stdout")
                container.outputs[nonblocking(err_r)] = LogLines("stderr")
                if request.stdin:
                    in_r, in_w = os.pipe2(os.O_CLOEXEC)
                    container.stdin_fd = in_w
                    undo.callback(os.close, in_w)
                else:
                    in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                child_fds = [in_r, out_w, err_w]
            # The init joins them itself, before it touches the image (0 too: a process
            # must not keep the shim's score, -999 under the daemon's systemd unit).
            container.cgroup_procs = request.cgroup_procs
            container.oom_file = request.oom_file
            limits = launcher.Limits(container.cgroup_procs, request.oom_score_adj)
            ours, theirs = sync_pair()
            undo.callback(ours.close)
            # A PID namespace of its own: the init is forked into it at once. In a pod-wide one
            # (the shim's children are born there) a setup process enters, then forks.
            born_in_pid_ns = plan.new_pid_ns and not plan.joins_pid and not self._mirror_exits
            try:
                child = fork_child(
                    lambda: launcher.run_init(
                        plan,
                        rootfs,
                        child_fds,
                        theirs.fileno(),
                        self._mirror_exits,
                        limits,
                        born_in_pid_ns,
                    ),
                    new_pid_namespace=born_in_pid_ns,
                )
            finally:
                theirs.close()
                for fd in set(child_fds):
                    os.close(fd)
            undo.callback(kill_and_reap, child)
            started = SetupProcesses()
            undo.callback(started.close)
            undo.callback(started.kill)  # the init first, then the process that forked it
            on_hooks = None
            if plan.hooks.pause_before_pivot:
                on_hooks = functools.partial(self._create_hooks, container)
            # The init's own createContainer hooks run while we wait for it.
            timeout = SYNC_TIMEOUT_SECONDS + oci_hooks.budget(plan.hooks.create_container)
            try:
                pid, payload = receive_ready(ours, timeout, started, on_hooks)
            except OSError as e:
                raise ContainerError("failed", f"waiting for the container's init: {e}") from e
            container.pid = pid
            container.sync = ours
            if "oom_score_adj" in payload:
                container.oom_score_adj = int(payload["oom_score_adj"])
            container.user = User(
                int(payload["uid"]), int(payload["gid"]), tuple(payload.get("groups", ()))
            )
            undo.pop_all()
            started.close()
        # A pod's shim outlives one container: the child that forked the init (if any) is
        # reaped by the SIGCHLD loop; the init itself is adopted by this subreaper.
        self._containers[container_id] = container
        if child != pid and self._mirror_exits:
            self._by_pid[child] = container_id  # it exits with the init's status
        else:
            self._by_pid[pid] = container_id
        for fd in container.outputs:
            self._hooks.add_reader(fd, functools.partial(self._on_output, container, fd))
        # The score applied (maybe clamped), when one was asked for.
        return dataclasses.replace(container.view(), oom_score_adj=container.oom_score_adj)

    def start(self, container_id: str) -> messages.ContainerView:
        container = self.get(container_id)
        if container.status != "created" or container.sync is None:
            raise ContainerError(
                "invalid", f"container {container_id} is {container.status}, not created"
            )
        sync, container.sync = container.sync, None
        go = b"S"
        hooks = container.plan.hooks
        if hooks.start_container:
            go += self._hook_identity(container)
        timeout = SYNC_TIMEOUT_SECONDS + oci_hooks.budget(hooks.start_container)
        try:
            sync.send(go)
            ready = wait_readable(sync, timeout)
            data = sync.recv(65536) if ready else b"Etimed out waiting for execve"
        except OSError as e:
            data = f"E{e}".encode()
        finally:
            sync.close()
        if data[:1] in (b"E", b"K"):
            message = data[1:].decode(errors="replace")
            container.started_at = time.time_ns()
            # The init exits on its own after reporting; its SIGCHLD must not overwrite this.
            self._record_exit(container, 128, "StartError", message)
            with contextlib.suppress(ProcessLookupError):
                os.kill(container.pid, signal.SIGKILL)
            raise ContainerError("start_failed", message)
        container.status = "running"
        container.started_at = time.time_ns()
        if hooks.poststart:
            # The spec: a poststart failure is logged, the start stands.
            state = self._hook_state(container, "running")
            with self._forking():
                run_hooks_logged("poststart", hooks.poststart, state, _warn, self._enter_runtime)
        return container.view()

    # --- OCI hooks of the runtime's namespaces --------------------------------------------

    def _hook_identity(self, container: Container, pid: int = 0) -> bytes:
        """What the init's own hooks need of the shim: the ID, the bundle, the init's PID in
        the runtime's PID namespace (the init cannot know it)."""
        info = {"id": container.id, "pid": pid or container.pid, "bundle": str(container.bundle)}
        return json.dumps(info).encode()

    def _hook_state(self, container: Container, status: str, pid: int = 0) -> bytes:
        return oci_hooks.state(
            container.id,
            status,
            pid or container.pid,
            str(container.bundle),
            container.plan.annotations,
        )

    def _forking(self) -> contextlib.AbstractContextManager[None]:
        return self._runtime.forking() if self._runtime else contextlib.nullcontext()

    def _enter_runtime(self) -> None:
        if self._runtime is not None:
            self._runtime.enter()

    def _create_hooks(self, container: Container, pid: int) -> bytes:
        """The init waits before pivot_root (its namespaces and mounts exist): prestart then
        createRuntime, in the runtime's namespaces; the first failure fails the create (the
        caller kills the init). Returns the go-ahead with what its own hooks need."""
        hooks = container.plan.hooks
        state = self._hook_state(container, "creating", pid)
        try:
            with self._forking():
                run_hooks("prestart", hooks.prestart, state, self._enter_runtime)
                run_hooks("createRuntime", hooks.create_runtime, state, self._enter_runtime)
        except HookFailed as e:
            raise ContainerError("hook_failed", str(e)) from e
        return b"C" + self._hook_identity(container, pid)

    # --- signals, logs, removal -----------------------------------------------------------

    def kill(self, container_id: str, signum: int) -> None:
        container = self.get(container_id)
        if container.status == "exited" or not container.pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(container.pid, signum)

    def reopen_log(self, container_id: str) -> None:
        container = self.get(container_id)
        if container.status != "running":
            raise ContainerError("invalid", f"container {container_id} is not running")
        container.log.reopen()

    def remove(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is None:
            return
        if container.status != "exited":
            raise ContainerError("invalid", f"container {container_id} is {container.status}")
        self._drop(container)

    # --- attach ---------------------------------------------------------------------------

    def attach(
        self, container_id: str, fds: Sequence[int], streams: Sequence[str], stdin: bool
    ) -> int:
        """`fds` (pipes, taken over) get copies of the running container's output streams
        named by `streams` until it exits or the reader goes; returns a dup of the container's
        stdin when asked for (-1 when it has none). A pipe that is full loses what does not
        fit: a slow attached client must not stall the shim or the container."""
        try:
            container = self.get(container_id)
            if container.status != "running" or not container.outputs:
                raise ContainerError("invalid", f"container {container_id} is not running")
            if len(fds) != len(streams) or not set(streams) <= {"stdout", "stderr"}:
                raise ContainerError("invalid", "attach needs one pipe per output stream")
            stdin_fd = os.dup(container.stdin_fd) if stdin and container.stdin_fd >= 0 else -1
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd, stream in zip(fds, streams, strict=True):
            container.attached[nonblocking(fd)] = stream
        return stdin_fd

    def close_stdin(self, container_id: str) -> None:
        """The container's stdin reaches EOF (stdin_once: the first attached client left)."""
        container = self.get(container_id)
        if container.stdin_fd >= 0:
            os.close(container.stdin_fd)
            container.stdin_fd = -1

    def _fan_out(self, container: Container, stream: str, data: bytes) -> None:
        for fd, wanted in list(container.attached.items()):
            if wanted != stream:
                continue
            try:
                os.write(fd, data)
            except BlockingIOError:
                pass
            except OSError:
                del container.attached[fd]
                os.close(fd)

    def _detach_all(self, container: Container) -> None:
        for fd in container.attached:
            os.close(fd)
        container.attached.clear()

    def _drop(self, container: Container) -> None:
        for fd, lines in list(container.outputs.items()):
            self._close_output(container, fd, lines)
        self._detach_all(container)
        if container.stdin_fd >= 0:
            os.close(container.stdin_fd)
            container.stdin_fd = -1
        if container.sync is not None:
            container.sync.close()
            container.sync = None
        container.log.close()
        self._containers.pop(container.id, None)

    def _on_output(self, container: Container, fd: int) -> None:
        lines = container.outputs.get(fd)
        if lines is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: a pty whose last writer is gone
        if not data:
            self._close_output(container, fd, lines)
            return
        container.log.write(lines.feed(data, time.time_ns()))
        if container.attached:
            self._fan_out(container, lines.stream, data)

    def _close_output(self, container: Container, fd: int, lines: LogLines) -> None:
        container.log.write(lines.close(time.time_ns()))
        container.outputs.pop(fd, None)
        self._hooks.remove_reader(fd)
        os.close(fd)
        if not container.outputs:
            # Nothing more to copy: attached clients see EOF.
            self._detach_all(container)

    def _drain(self, container: Container) -> None:
        for fd in list(container.outputs):
            while fd in container.outputs:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self._close_output(container, fd, container.outputs[fd])
                    break
                container.log.write(container.outputs[fd].feed(data, time.time_ns()))
                if container.attached:
                    self._fan_out(container, container.outputs[fd].stream, data)

    # --- exits ----------------------------------------------------------------------------

    def _record_exit(self, container: Container, code: int, reason: str, message: str) -> None:
        record = messages.ExitInfo(
            code, time.time_ns(), reason, message, container.started_at, container.pid
        )
        container.status = "exited"
        container.exit = record
        write_exit_file(container.bundle / CONTAINER_EXIT_FILE, record.to_wire())
        self._hooks.emit(messages.Exited(container.id, record))

    def on_child_exit(self, pid: int, status: int) -> None:
        """Called by the shim's reaper for every child it reaps."""
        if self._execs.on_child_exit(pid, status):
            return
        container_id = self._by_pid.pop(pid, None)
        if not container_id:
            return
        container = self._containers.get(container_id)
        if container is None or container.status == "exited":
            return
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            code = 128 - code  # killed by a signal: 137 for SIGKILL, as kubelet expects
        self._drain(container)
        if container.sync is not None:
            container.sync.close()
            container.sync = None
        reason = exit_reason(code, oom_kills(container.oom_file))
        self._record_exit(container, code, reason, "")

    def kill_all(self) -> None:
        """At shim shutdown: every container still running gets SIGKILL (PID 1 of a PID
        namespace takes its whole namespace with it)."""
        for container in self._containers.values():
            if container.status != "exited" and container.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(container.pid, signal.SIGKILL)
        self._execs.kill_all()

    def pending_exits(self) -> bool:
        return any(c.status != "exited" and c.pid for c in self._containers.values())

    # --- exec ---------------------------------------------------------------------------

    def exec(
        self,
        request: messages.Exec | messages.ExecStream,
        respond: Respond,
        stdio: Sequence[int] | None = None,
    ) -> None:
        """Runs a command in the container (see `Execs.start`); `stdio` is closed here."""
        try:
            container = self.get(request.id)
        except ContainerError:
            for fd in stdio or ():
                os.close(fd)
            raise
        self._execs.start(container, request, respond, stdio)

    def next_deadline(self) -> float | None:
        return self._execs.next_deadline()

    def check_deadlines(self) -> None:
        self._execs.check_deadlines()
