"""The daemon's side of a shim: start one (fork+exec, own session), find out whether it is still
the process we started, and call it over its socket with the typed requests of
`cri_py.shim.messages` (`ShimClient`). Blocking, except the fd-passing calls (`exec_stream`,
`attach`), which are coroutines; callers run the rest off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import cri_py
from cri_py.linux.poll import wait_readable
from cri_py.shim import messages, protocol
from cri_py.shim.spec import (
    LOG_FILE,
    SHIM_SPEC_FILE,
    SOCKET_FILE,
    TEMPLATE_MODULE,
    TEMPLATE_TITLE_SPACE,
    ShimSpec,
)

START_TIMEOUT_SECONDS = 10.0
CALL_TIMEOUT_SECONDS = 5.0
CREATE_TIMEOUT_SECONDS = 30.0
# An ExecSync reply's frame: above the bound the shim keeps to (`execs.EXEC_FRAME_BYTES`).
EXEC_FRAME_BYTES = 64 * 1024 * 1024


class _WireReply(Protocol):
    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self: ...


_Reply = TypeVar("_Reply", bound=_WireReply)


class ShimError(Exception):
    """A shim could not be started or called; the message says which and why. `kind` is the
    shim's error kind ("not_found", "timeout", ...) when the shim itself answered the error."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ShimProcess:
    pid: int
    # Start time in clock ticks since boot (/proc/<pid>/stat field 22): with the PID, it tells
    # our shim apart from an unrelated process that reused its PID after a crash.
    start_time: int
    # PID 1 of the pod's PID namespace (0 when the pod has none).
    init_pid: int


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    state = fields[0]
    if state in ("Z", "X"):
        return None
    return int(fields[19])


def _package_parent() -> str:
    return str(Path(cri_py.__file__).resolve().parent.parent)


def _shim_env() -> dict[str, str]:
    # -S: no site import (saves memory and ~10 ms); cri_py is found through PYTHONPATH instead.
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "PYTHONPATH": _package_parent(),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


class ShimTemplate:
    """The daemon's handle on the shim template (cri_py/shim/zygote.py): a process that has
    imported the shim once and forks each pod's shim, so a shim costs a fork instead of an
    interpreter start, and shares the template's pages. Thread-safe; if the template dies it
    is started again on the next use."""

    def __init__(self, log_path: Path, on_start: Callable[[int], None] | None = None) -> None:
        self._log_path = log_path
        self._on_start = on_start or (lambda pid: None)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else 0

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        with self._lock:
            self._start(timeout)

    def ready(self, timeout: float = START_TIMEOUT_SECONDS) -> bool:
        """Whether a template serves (started now if none does); False if none can start."""
        with self._lock:
            if self._control is None:
                try:
                    self._start(timeout)
                except ShimError:
                    return False
            return True

    def _start(self, timeout: float) -> None:
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(self._log_path, "ab") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-S", "-m", TEMPLATE_MODULE, " " * TEMPLATE_TITLE_SPACE],
                    stdin=theirs.fileno(),
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    start_new_session=True,
                    close_fds=True,
                    env=_shim_env(),
                    cwd="/",
                )
        finally:
            theirs.close()
        assert process.stdout is not None
        try:
            ready = _read_line(process.stdout.fileno(), timeout)
        except ShimError:
            ready = b""
        finally:
            process.stdout.close()
        if ready != b"ready":
            ours.close()
            process.kill()
            process.wait()
            raise ShimError(f"shim template did not start; see {self._log_path}")
        self._process, self._control = process, ours
        self._on_start(process.pid)

    def spawn(self, bundle: Path, report_fd: int, log_fd: int, timeout: float) -> None:
        """Has the template fork the shim for `bundle`, reporting on `report_fd`."""
        request = json.dumps({"bundle": str(bundle)}).encode()
        with self._lock:
            for attempt in (1, 2):
                if self._control is None:
                    self._start(timeout)
                assert self._control is not None
                try:
                    socket.send_fds(self._control, [request], [report_fd, log_fd])
                except OSError as e:
                    # Dead before it took the request: a new template takes the retry.
                    self._stop()
                    if attempt == 2:
                        raise ShimError(f"shim template: {e}") from e
                    continue
                # Once taken, never retried: the first shim may exist by now.
                try:
                    self._control.settimeout(timeout)
                    answer = self._control.recv(4096)
                except OSError as e:
                    self._stop()
                    raise ShimError(f"shim template did not answer: {e}") from e
                if not answer:
                    self._stop()
                    raise ShimError("shim template died while starting a shim")
                reply = json.loads(answer)
                if "error" in reply:
                    raise ShimError(str(reply["error"]))
                return

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        """End of file on its socket ends the template; shims it forked live on."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(2.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def start_shim(
    bundle: Path,
    spec: ShimSpec,
    timeout: float = START_TIMEOUT_SECONDS,
    template: ShimTemplate | None = None,
) -> ShimProcess:
    """Writes the spec into `bundle`, starts the shim (forked by `template` when given, else
    exec'd), returns once it serves its socket."""
    (bundle / SHIM_SPEC_FILE).write_text(spec.to_json())
    if template is not None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            with open(bundle / LOG_FILE, "ab") as log_file:
                try:
                    template.spawn(bundle, write_end, log_file.fileno(), timeout)
                finally:
                    os.close(write_end)
            line = _read_line(read_end, timeout)
        finally:
            os.close(read_end)
        return _started(bundle, line)
    with open(bundle / LOG_FILE, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-S", "-m", "cri_py.shim", str(bundle)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
            env=_shim_env(),
            cwd="/",
        )
    assert process.stdout is not None
    try:
        line = _read_line(process.stdout.fileno(), timeout)
    finally:
        process.stdout.close()
        # The exec'd process exits right after forking the shim (or on a setup error).
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return _started(bundle, line)


def _started(bundle: Path, line: bytes) -> ShimProcess:
    if not line:
        log_tail = (bundle / LOG_FILE).read_text(errors="replace")[-2000:]
        raise ShimError(f"shim for {bundle.name} exited without reporting: {log_tail.strip()}")
    report = json.loads(line)
    if "error" in report:
        raise ShimError(f"shim for {bundle.name}: {report['error']}")
    pid = int(report["pid"])
    start_time = process_start_time(pid)
    if start_time is None:
        raise ShimError(f"shim for {bundle.name} (pid {pid}) died right after starting")
    return ShimProcess(pid=pid, start_time=start_time, init_pid=int(report["init_pid"]))


def _read_line(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ShimError(f"shim did not report within {timeout}s")
        if not wait_readable(fd, remaining):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def connect_unix(conn: socket.socket, path: Path, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
    """connect() through an O_PATH fd of the socket's dir: the full path can exceed the 108
    bytes of sun_path (a deep run dir plus a 64-character sandbox ID). A unix socket whose
    accept queue is full refuses a connect with a timeout at once (EAGAIN), where a TCP one
    would wait: many calls into one pod at the same moment (exec probes, PreStop hooks) retry
    until the shim's loop has accepted the ones before them, for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            try:
                conn.connect(f"/proc/self/fd/{dir_fd}/{path.name}")
                return
            except BlockingIOError:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
    finally:
        os.close(dir_fd)


class ShimClient:
    """Calls to one shim, a fresh connection per call (calls are rare). Each method sends one
    request of `messages` and returns the typed reply; a shim's error answer, a reply that
    does not decode and a socket failure raise ShimError (`kind` set for the first)."""

    def __init__(self, bundle: Path) -> None:
        self.socket_path = bundle / SOCKET_FILE
        self._next_id = 1

    def ping(self, timeout: float = CALL_TIMEOUT_SECONDS) -> messages.ShimStatus:
        return self._call(messages.Ping(), messages.ShimStatus, timeout)

    def version(self, timeout: float = CALL_TIMEOUT_SECONDS) -> int:
        """The protocol version the shim speaks (1 for a shim that does not say)."""
        return self.ping(timeout).protocol

    def shutdown(self, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self._call(messages.Shutdown(), messages.Done, timeout)

    def create(
        self, request: messages.Create, timeout: float = CREATE_TIMEOUT_SECONDS
    ) -> messages.ContainerView:
        return self._call(request, messages.ContainerView, timeout)

    def start(
        self, container_id: str, timeout: float = CALL_TIMEOUT_SECONDS
    ) -> messages.ContainerView:
        return self._call(messages.Start(container_id), messages.ContainerView, timeout)

    def kill(self, container_id: str, signum: int) -> None:
        self._call(messages.Kill(container_id, int(signum)), messages.Done)

    def container_status(self, container_id: str) -> messages.ContainerView:
        return self._call(messages.ContainerStatus(container_id), messages.ContainerView)

    def close_stdin(self, container_id: str) -> None:
        self._call(messages.CloseStdin(container_id), messages.Done)

    def reopen_log(self, container_id: str) -> None:
        self._call(messages.ReopenLog(container_id), messages.Done)

    def remove(self, container_id: str) -> None:
        self._call(messages.Remove(container_id), messages.Done)

    def exec(
        self, container_id: str, args: Sequence[str], timeout: float, call_timeout: float
    ) -> messages.ExecResult:
        """ExecSync: the shim kills the command after `timeout` seconds (0: never) and answers
        a "timeout" error; `call_timeout` guards against a shim that never answers."""
        request = messages.Exec(container_id, tuple(args), timeout)
        return self._call(request, messages.ExecResult, call_timeout, EXEC_FRAME_BYTES)

    async def exec_stream(
        self, container_id: str, args: Sequence[str], tty: bool, stdio: list[int]
    ) -> messages.ExecResult:
        """Runs `args` on `stdio` (stdin, stdout, stderr; passed to the shim, still the
        caller's to close) and returns when the command exits."""
        request = messages.ExecStream(container_id, tuple(args), tty)
        result, passed = await call_passing_fds(
            self.socket_path, request.METHOD, request.to_wire(), stdio
        )
        for fd in passed:
            os.close(fd)
        return _decode(self.socket_path, request.METHOD, result, messages.ExecResult)

    async def attach(self, container_id: str, outputs: Mapping[str, int], stdin: bool) -> int:
        """Has the shim copy the container's output streams into `outputs` (stream name ->
        pipe write end, still the caller's to close); returns a dup of the container's stdin
        when `stdin` and it has one, else -1."""
        names = sorted(outputs)
        request = messages.Attach(container_id, tuple(names), stdin)
        result, passed = await call_passing_fds(
            self.socket_path, request.METHOD, request.to_wire(), [outputs[n] for n in names]
        )
        try:
            reply = _decode(self.socket_path, request.METHOD, result, messages.Attached)
        except ShimError:
            for fd in passed:
                os.close(fd)
            raise
        stdin_fd = passed.pop(0) if reply.stdin and passed else -1
        for fd in passed:
            os.close(fd)
        return stdin_fd

    def _call(
        self,
        request: messages.ShimRequest,
        reply: type[_Reply],
        timeout: float = CALL_TIMEOUT_SECONDS,
        max_frame: int = protocol.MAX_FRAME_BYTES,
    ) -> _Reply:
        result = self._exchange(request.METHOD, request.to_wire(), timeout, max_frame)
        return _decode(self.socket_path, request.METHOD, result, reply)

    def _exchange(
        self, method: str, params: Mapping[str, Any], timeout: float, max_frame: int
    ) -> Mapping[str, Any]:
        request = protocol.Request(self._next_id, method, dict(params))
        self._next_id += 1
        deadline = time.monotonic() + timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as conn:
                conn.settimeout(timeout)
                connect_unix(conn, self.socket_path, timeout)
                conn.sendall(protocol.encode(request))
                decoder = protocol.Decoder(max_frame)
                while True:
                    conn.settimeout(max(0.001, deadline - time.monotonic()))
                    data = conn.recv(65536)
                    if not data:
                        raise ShimError(f"shim at {self.socket_path} closed the connection")
                    for message in decoder.feed(data):
                        if isinstance(message, protocol.Response) and message.id == request.id:
                            if message.error is not None:
                                raise ShimError(
                                    f"shim {method}: {message.error.message}", message.error.kind
                                )
                            return message.result or {}
        except (OSError, protocol.ProtocolError) as e:
            raise ShimError(f"shim at {self.socket_path}: {method}: {e}") from e


def _decode(
    socket_path: Path, method: str, result: Mapping[str, Any], reply: type[_Reply]
) -> _Reply:
    try:
        return reply.from_wire(result)
    except protocol.ProtocolError as e:
        raise ShimError(f"shim at {socket_path}: {method}: unexpected reply: {e}") from e


def stop_shim(bundle: Path, shim: ShimProcess, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
    """Asks the shim to shut down, SIGKILLs it after `timeout`; returns once it is gone.

    Safe to call for a shim that already died, or whose PID now belongs to someone else: the
    pidfd is opened first and checked against the recorded start time before anything is sent.
    """
    try:
        pidfd = os.pidfd_open(shim.pid)
    except ProcessLookupError:
        return
    try:
        if process_start_time(shim.pid) != shim.start_time:
            return
        with contextlib.suppress(ShimError):
            ShimClient(bundle).shutdown(timeout)
        if wait_readable(pidfd, timeout):
            return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if not wait_readable(pidfd, timeout):
            raise ShimError(f"shim {shim.pid} did not die within {timeout}s of SIGKILL")
    except ProcessLookupError:
        return
    finally:
        os.close(pidfd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def call_passing_fds(
    socket_path: Path, method: str, params: Mapping[str, Any], fds: list[int]
) -> tuple[Mapping[str, Any], list[int]]:
    """One call that hands the shim `fds` (SCM_RIGHTS) with the request and awaits the answer
    without blocking the event loop (a streaming exec's answer comes when the command exits).
    Returns the result and the fds the shim passed back (the caller's to close). The caller
    still owns `fds` and may close them once this returns."""
    loop = asyncio.get_running_loop()
    received: list[int] = []
    request = protocol.Request(1, method, dict(params))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as conn:
            await asyncio.to_thread(connect_unix, conn, socket_path)
            conn.setblocking(False)
            frame = protocol.encode(request)
            # A request frame is small: one sendmsg takes it whole on a fresh unix socket.
            sent = socket.send_fds(conn, [frame], fds)
            if sent != len(frame):
                await loop.sock_sendall(conn, frame[sent:])
            decoder = protocol.Decoder()
            while True:
                try:
                    data, more, _, _ = socket.recv_fds(conn, 65536, 3, socket.MSG_CMSG_CLOEXEC)
                except BlockingIOError:
                    readable = loop.create_future()
                    loop.add_reader(conn, _wake, readable)
                    try:
                        await readable
                    finally:
                        loop.remove_reader(conn)
                    continue
                received += more
                if not data:
                    raise ShimError(f"shim at {socket_path} closed the connection")
                for message in decoder.feed(data):
                    if isinstance(message, protocol.Response) and message.id == request.id:
                        if message.error is not None:
                            raise ShimError(
                                f"shim {method}: {message.error.message}", message.error.kind
                            )
                        passed, received = received, []
                        return message.result or {}, passed
    except (OSError, protocol.ProtocolError) as e:
        raise ShimError(f"shim at {socket_path}: {method}: {e}") from e
    finally:
        for fd in received:
            os.close(fd)
