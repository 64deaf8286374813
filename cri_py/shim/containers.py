"""The shim's containers: launch (create/start), signals, stdio into CRI log files, exits
recorded in each container's dir, and ExecSync sessions.

Blocking is bounded: create and start wait on the child's sync socket (milliseconds, with a
timeout); everything else is driven by the shim's selector loop through `Hooks`. The shim is
single-threaded, so forking here is safe. Stdlib only.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import os
import pty
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_py.oci.plan import LaunchPlan, User, build_plan, mount_step
from cri_py.shim import launcher
from cri_py.shim.logs import LogLines

SYNC_TIMEOUT_SECONDS = 10.0
EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024
# An exec's answer: both outputs at their limit, base64-encoded, plus the frame's JSON.
EXEC_FRAME_BYTES = 2 * EXEC_OUTPUT_LIMIT * 4 // 3 + 64 * 1024
# After an exec'd command exits, how long its output may keep flowing (a background child
# holding the pipe) before the answer goes without it.
EXEC_DRAIN_SECONDS = 1.0
EXIT_FILE = "exit.json"
SPEC_FILE = "config.json"


class ContainerError(Exception):
    """An operation failed; `kind` is the protocol error kind ("not_found", "invalid", ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Hooks:
    add_reader: Callable[[int, Callable[[], None]], None]
    remove_reader: Callable[[int], None]
    emit: Callable[[str, Mapping[str, Any]], None]


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


def _nonblocking(fd: int) -> int:
    os.set_blocking(fd, False)
    return fd


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
    sync: socket.socket, timeout: float, started: SetupProcesses | None = None
) -> tuple[int, dict[str, Any]]:
    """Waits for the child's "R" (its PID, from SCM_CREDENTIALS, and payload) or raises with
    its "E" text. Each "P" before it (a process that will exec, with its PID) goes to
    `started`, for the caller to kill if this raises."""
    deadline = time.monotonic() + timeout
    size = socket.CMSG_SPACE(struct.calcsize("iII"))
    while True:
        ready, _, _ = select.select([sync], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise ContainerError("failed", f"the child did not get ready within {timeout}s")
        data, ancillary, _, _ = sync.recvmsg(65536, size)
        if data.startswith(b"E"):
            raise ContainerError("failed", data[1:].decode(errors="replace"))
        pid = _credentials_pid(ancillary)
        if data == b"P":
            if pid is not None and started is not None:
                started.add(pid)
            continue
        if not data.startswith(b"R"):
            raise ContainerError("failed", "the child exited during setup")
        if pid is None:
            raise ContainerError("failed", "the child's ready message carried no credentials")
        return pid, json.loads(data[1:] or b"{}")


def _sync_pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return ours, theirs


def _fork_child(run: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            run()
        finally:
            os._exit(launcher.EXIT_SETUP_FAILED)
    return pid


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
    exit: dict[str, Any] | None = None
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

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "exit": self.exit,
            "user": {
                "uid": self.user.uid,
                "gid": self.user.gid,
                "groups": list(self.user.additional_gids),
            },
        }


@dataclass
class ExecSession:
    container: str
    pid: int  # our child, which mirrors the command's exit status
    command_pid: int  # the command itself (in the container's PID namespace)
    respond: Callable[[Mapping[str, Any] | None, str, str], None]
    deadline: float | None
    open_fds: dict[int, str] = field(default_factory=dict)
    output: dict[str, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()}
    )
    exit_code: int | None = None
    drain_deadline: float | None = None
    timed_out: bool = False


class Containers:
    def __init__(self, hooks: Hooks, pod_pid_namespace: bool = False) -> None:
        self._hooks = hooks
        # Our children live in the pod's PID namespace: see launcher._parent_of_init.
        self._mirror_exits = pod_pid_namespace
        self._containers: dict[str, Container] = {}
        self._by_pid: dict[int, str] = {}
        self._execs: dict[int, ExecSession] = {}

    def get(self, container_id: str) -> Container:
        container = self._containers.get(container_id)
        if container is None:
            raise ContainerError("not_found", f"container {container_id} not found in this shim")
        return container

    def list(self) -> list[dict[str, Any]]:
        return [c.view() for c in self._containers.values()]

    # --- create / start -------------------------------------------------------------------

    def create(self, params: Mapping[str, Any]) -> dict[str, Any]:
        container_id = str(params["id"])
        if container_id in self._containers:
            raise ContainerError("exists", f"container {container_id} already exists")
        bundle = Path(str(params["bundle"]))
        spec = json.loads((bundle / SPEC_FILE).read_text())
        try:
            plan = build_plan(spec)
            mounts = params.get("cgroup_mounts", ())
            plan = dataclasses.replace(
                plan, cgroup_mounts=tuple((str(n), str(d)) for n, d in mounts)
            )
            rootfs = [mount_step({**m, "destination": plan.rootfs}) for m in params["rootfs"]]
        except ValueError as e:
            raise ContainerError("invalid", str(e)) from e
        with contextlib.ExitStack() as undo:
            log = LogFile(str(params.get("log_path", "")))
            undo.callback(log.close)
            child_fds: list[int] = []
            container = Container(container_id, bundle, plan, log, created_at=time.time_ns())
            if plan.terminal:
                master, slave = pty.openpty()
                undo.callback(os.close, master)
                child_fds = [slave, slave, slave]
                container.outputs[_nonblocking(master)] = LogLines("stdout")
                if params.get("stdin"):
                    container.stdin_fd = os.dup(master)
            else:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                undo.callback(os.close, out_r)
                undo.callback(os.close, err_r)
                container.outputs[_nonblocking(out_r)] = LogLines("stdout")
                container.outputs[_nonblocking(err_r)] = LogLines("stderr")
                if params.get("stdin"):
                    in_r, in_w = os.pipe2(os.O_CLOEXEC)
                    container.stdin_fd = in_w
                    undo.callback(os.close, in_w)
                else:
                    in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                child_fds = [in_r, out_w, err_w]
            # The init joins them itself, before it touches the image (0 too: a process
            # must not keep the shim's score, -999 under the daemon's systemd unit).
            container.cgroup_procs = tuple(str(p) for p in params.get("cgroup_procs", ()))
            container.oom_file = str(params.get("oom_file", ""))
            wanted_score = params.get("oom_score_adj")
            limits = launcher.Limits(
                container.cgroup_procs, None if wanted_score is None else int(wanted_score)
            )
            ours, theirs = _sync_pair()
            undo.callback(ours.close)
            try:
                child = _fork_child(
                    lambda: launcher.run_init(
                        plan, rootfs, child_fds, theirs.fileno(), self._mirror_exits, limits
                    )
                )
            finally:
                theirs.close()
                for fd in set(child_fds):
                    os.close(fd)
            undo.callback(_kill_and_reap, child)
            started = SetupProcesses()
            undo.callback(started.close)
            undo.callback(started.kill)  # the init first, then the process that forked it
            try:
                pid, payload = receive_ready(ours, SYNC_TIMEOUT_SECONDS, started)
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
        view = container.view()
        if container.oom_score_adj is not None:
            view["oom_score_adj"] = container.oom_score_adj  # applied (maybe clamped)
        return view

    def start(self, container_id: str) -> dict[str, Any]:
        container = self.get(container_id)
        if container.status != "created" or container.sync is None:
            raise ContainerError(
                "invalid", f"container {container_id} is {container.status}, not created"
            )
        sync, container.sync = container.sync, None
        try:
            sync.send(b"S")
            ready, _, _ = select.select([sync], [], [], SYNC_TIMEOUT_SECONDS)
            data = sync.recv(65536) if ready else b"Etimed out waiting for execve"
        except OSError as e:
            data = f"E{e}".encode()
        finally:
            sync.close()
        if data.startswith(b"E"):
            message = data[1:].decode(errors="replace")
            container.started_at = time.time_ns()
            # The init exits on its own after reporting; its SIGCHLD must not overwrite this.
            self._record_exit(container, 128, "StartError", message)
            with contextlib.suppress(ProcessLookupError):
                os.kill(container.pid, signal.SIGKILL)
            raise ContainerError("start_failed", message)
        container.status = "running"
        container.started_at = time.time_ns()
        return container.view()

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
            container.attached[_nonblocking(fd)] = stream
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
        record = {
            "exit_code": code,
            "finished_at": time.time_ns(),
            "reason": reason,
            "message": message,
            "started_at": container.started_at,
            "pid": container.pid,
        }
        container.status = "exited"
        container.exit = record
        write_exit_file(container.bundle / EXIT_FILE, record)
        self._hooks.emit("exited", {"id": container.id, **record})

    def on_child_exit(self, pid: int, status: int) -> None:
        """Called by the shim's reaper for every child it reaps."""
        session = self._execs.get(pid)
        if session is not None:
            session.exit_code = os.waitstatus_to_exitcode(status)
            session.drain_deadline = time.monotonic() + EXEC_DRAIN_SECONDS
            self._maybe_finish(session)
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
        for session in self._execs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(session.command_pid, signal.SIGKILL)

    def pending_exits(self) -> bool:
        return any(c.status != "exited" and c.pid for c in self._containers.values())

    # --- exec -----------------------------------------------------------------------------

    def exec(
        self,
        params: Mapping[str, Any],
        respond: Callable[[Mapping[str, Any] | None, str, str], None],
        stdio: Sequence[int] | None = None,
    ) -> None:
        """Runs a command in the container and `respond`s with its exit status. With `stdio`
        (the daemon's three fds for a streaming exec, closed here) the command uses them and no
        output is collected; otherwise its output is buffered into the answer (ExecSync)."""
        if stdio is not None:
            try:
                self._exec(params, respond, stdio)
            finally:
                for fd in stdio:
                    os.close(fd)
            return
        self._exec(params, respond, None)

    def _exec(
        self,
        params: Mapping[str, Any],
        respond: Callable[[Mapping[str, Any] | None, str, str], None],
        stdio: Sequence[int] | None,
    ) -> None:
        container = self.get(str(params["id"]))
        if container.status != "running":
            raise ContainerError("invalid", f"container {container.id} is not running")
        args = [str(a) for a in params.get("args", ())]
        if not args:
            raise ContainerError("invalid", "exec needs a command")
        timeout = float(params.get("timeout", 0) or 0)
        kinds = {"network": "net", "ipc": "ipc", "uts": "uts", "pid": "pid", "mount": "mnt"}
        if container.plan.user_namespace:
            kinds["user"] = "user"  # last: the others need the host's root to join
        join = [(kind, f"/proc/{container.pid}/ns/{name}") for kind, name in kinds.items()]
        if stdio is not None and len(stdio) != 3:
            raise ContainerError("invalid", f"a streaming exec needs 3 fds, got {len(stdio)}")
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        child_stdio = list(stdio) if stdio is not None else [null, out_w, err_w]
        ours, theirs = _sync_pair()
        plan = container.plan
        # Confined as the init is: its cgroups and the score it got, its rlimits.
        limits = launcher.Limits(container.cgroup_procs, container.oom_score_adj)
        try:
            pid = _fork_child(
                lambda: launcher.run_exec(
                    join,
                    container.user,
                    plan.cwd,
                    args,
                    plan.env,
                    child_stdio,
                    theirs.fileno(),
                    plan.security,
                    bool(params.get("tty")),
                    limits,
                    plan.rlimits,
                )
            )
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
            theirs.close()
        started = SetupProcesses()
        try:
            command_pid, _ = receive_ready(ours, SYNC_TIMEOUT_SECONDS, started)
        except (ContainerError, OSError) as e:
            started.kill()  # the command, in the container, then the process that forked it
            _kill_and_reap(pid)
            os.close(out_r)
            os.close(err_r)
            raise ContainerError("failed", f"exec in {container.id}: {e}") from e
        finally:
            started.close()
            ours.close()
        session = ExecSession(
            container.id,
            pid,
            command_pid,
            respond,
            time.monotonic() + timeout if timeout > 0 else None,
        )
        self._execs[pid] = session
        if stdio is not None:
            # Streaming: the output goes straight to the daemon; the answer is the exit status.
            os.close(out_r)
            os.close(err_r)
            return
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            session.open_fds[_nonblocking(fd)] = stream
            self._hooks.add_reader(fd, functools.partial(self._on_exec_output, session, fd))

    def _on_exec_output(self, session: ExecSession, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self._close_exec_output(session, fd)
            self._maybe_finish(session)
            return
        buffer = session.output[session.open_fds[fd]]
        room = EXEC_OUTPUT_LIMIT - len(buffer)
        if room > 0:
            buffer += data[:room]

    def _close_exec_output(self, session: ExecSession, fd: int) -> None:
        session.open_fds.pop(fd, None)
        self._hooks.remove_reader(fd)
        os.close(fd)

    def _maybe_finish(self, session: ExecSession, force: bool = False) -> None:
        if session.exit_code is None or (session.open_fds and not force):
            return
        for fd in list(session.open_fds):
            self._close_exec_output(session, fd)
        self._execs.pop(session.pid, None)
        if session.timed_out:
            session.respond(None, "timeout", "command timed out")
            return
        session.respond(
            {
                "exit_code": session.exit_code,
                "stdout": base64.b64encode(session.output["stdout"]).decode(),
                "stderr": base64.b64encode(session.output["stderr"]).decode(),
            },
            "",
            "",
        )

    def next_deadline(self) -> float | None:
        deadlines = [d for s in self._execs.values() for d in (s.deadline, s.drain_deadline) if d]
        return min(deadlines) if deadlines else None

    def check_deadlines(self) -> None:
        now = time.monotonic()
        for session in list(self._execs.values()):
            if session.exit_code is None and session.deadline and now >= session.deadline:
                session.timed_out = True
                session.deadline = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(session.command_pid, signal.SIGKILL)
            elif session.drain_deadline and now >= session.drain_deadline:
                self._maybe_finish(session, force=True)


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
