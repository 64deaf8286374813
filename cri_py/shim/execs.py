"""The shim's exec sessions: a command run in a running container (ExecSync with its output
collected into the reply, or a streaming exec on fds the daemon passed), its timeout, and the
reply when it exits. The container itself (namespaces, user, limits) is `containers`'s; the
launch is `launcher.run_exec`. Driven by the shim's selector loop through `Hooks`. Stdlib only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cri_py.shim import launcher, messages
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

if TYPE_CHECKING:
    from cri_py.shim.containers import Container, Hooks

EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024
# An exec's answer: both outputs at their limit, base64-encoded, plus the frame's JSON.
EXEC_FRAME_BYTES = 2 * EXEC_OUTPUT_LIMIT * 4 // 3 + 64 * 1024
# After an exec'd command exits, how long its output may keep flowing (a background child
# holding the pipe) before the answer goes without it.
EXEC_DRAIN_SECONDS = 1.0

# The answer to an exec: its result, or an error kind and message.
Respond = Callable[[messages.ExecResult | None, str, str], None]


@dataclass
class ExecSession:
    container: str
    pid: int  # our child, which mirrors the command's exit status
    command_pid: int  # the command itself (in the container's PID namespace)
    respond: Respond
    deadline: float | None
    open_fds: dict[int, str] = field(default_factory=dict)
    output: dict[str, bytearray] = field(
        default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()}
    )
    exit_code: int | None = None
    drain_deadline: float | None = None
    timed_out: bool = False


class Execs:
    def __init__(self, hooks: Hooks) -> None:
        self._hooks = hooks
        self._sessions: dict[int, ExecSession] = {}

    def start(
        self,
        container: Container,
        request: messages.Exec | messages.ExecStream,
        respond: Respond,
        stdio: Sequence[int] | None = None,
    ) -> None:
        """Runs the request's command in `container` and `respond`s with its exit status.
        With `stdio` (the daemon's three fds for a streaming exec, closed here) the command
        uses them and no output is collected; otherwise its output is buffered into the
        answer (ExecSync)."""
        if stdio is not None:
            try:
                self._start(container, request, respond, stdio)
            finally:
                for fd in stdio:
                    os.close(fd)
            return
        self._start(container, request, respond, None)

    def _start(
        self,
        container: Container,
        request: messages.Exec | messages.ExecStream,
        respond: Respond,
        stdio: Sequence[int] | None,
    ) -> None:
        if container.status != "running":
            raise ContainerError("invalid", f"container {container.id} is not running")
        args = list(request.args)
        if not args:
            raise ContainerError("invalid", "exec needs a command")
        timeout = request.timeout if isinstance(request, messages.Exec) else 0.0
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
        ours, theirs = sync_pair()
        plan = container.plan
        # Confined as the init is: its cgroups and the score it got, its rlimits.
        limits = launcher.Limits(container.cgroup_procs, container.oom_score_adj)
        try:
            pid = fork_child(
                lambda: launcher.run_exec(
                    join,
                    container.user,
                    plan.cwd,
                    args,
                    plan.env,
                    child_stdio,
                    theirs.fileno(),
                    plan.security,
                    request.tty,
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
            kill_and_reap(pid)
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
        self._sessions[pid] = session
        if stdio is not None:
            # Streaming: the output goes straight to the daemon; the answer is the exit status.
            os.close(out_r)
            os.close(err_r)
            return
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            session.open_fds[nonblocking(fd)] = stream
            self._hooks.add_reader(fd, functools.partial(self._on_output, session, fd))

    def on_child_exit(self, pid: int, status: int) -> bool:
        """Whether `pid` was an exec's (its session then finishes)."""
        session = self._sessions.get(pid)
        if session is None:
            return False
        session.exit_code = os.waitstatus_to_exitcode(status)
        session.drain_deadline = time.monotonic() + EXEC_DRAIN_SECONDS
        self._maybe_finish(session)
        return True

    def kill_all(self) -> None:
        for session in self._sessions.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(session.command_pid, signal.SIGKILL)

    def _on_output(self, session: ExecSession, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self._close_output(session, fd)
            self._maybe_finish(session)
            return
        buffer = session.output[session.open_fds[fd]]
        room = EXEC_OUTPUT_LIMIT - len(buffer)
        if room > 0:
            buffer += data[:room]

    def _close_output(self, session: ExecSession, fd: int) -> None:
        session.open_fds.pop(fd, None)
        self._hooks.remove_reader(fd)
        os.close(fd)

    def _maybe_finish(self, session: ExecSession, force: bool = False) -> None:
        if session.exit_code is None or (session.open_fds and not force):
            return
        for fd in list(session.open_fds):
            self._close_output(session, fd)
        self._sessions.pop(session.pid, None)
        if session.timed_out:
            session.respond(None, "timeout", "command timed out")
            return
        result = messages.ExecResult(
            session.exit_code, bytes(session.output["stdout"]), bytes(session.output["stderr"])
        )
        session.respond(result, "", "")

    def next_deadline(self) -> float | None:
        deadlines = [
            d for s in self._sessions.values() for d in (s.deadline, s.drain_deadline) if d
        ]
        return min(deadlines) if deadlines else None

    def check_deadlines(self) -> None:
        now = time.monotonic()
        for session in list(self._sessions.values()):
            if session.exit_code is None and session.deadline and now >= session.deadline:
                session.timed_out = True
                session.deadline = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(session.command_pid, signal.SIGKILL)
            elif session.drain_deadline and now >= session.drain_deadline:
                self._maybe_finish(session, force=True)
