"""The shim process: creates the pod's namespaces, then serves the protocol on `shim.sock`.

Started by the daemon as `python -m cri_py.shim <sandbox run dir>` in its own session. The exec'd
process creates the namespaces, forks the long-lived shim and exits, so the shim is nobody's
child but init's (or a subreaper's) and survives the daemon; forked by the shim template
(`zygote.py`) instead, the process is the shim itself. The shim reports one JSON line on
the stdout it inherited (`{"pid": ..}` or `{"error": ..}`), then points stdout/stderr at
`shim.log`. It is a child subreaper so that container processes orphaned inside the pod are
reaped here. With a pod-wide PID namespace it forks that namespace's init (PID 1), which only
reaps; killing it ends every process of the namespace.

Imports stay few (no grpc, no asyncio): every pod pays this process's memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from cri_py.linux import syscalls
from cri_py.linux.namespaces import join_namespace
from cri_py.linux.userns import UserNamespaceHelper
from cri_py.shim import messages, protocol
from cri_py.shim.containers import Containers, Hooks
from cri_py.shim.execs import EXEC_FRAME_BYTES
from cri_py.shim.hooks import RuntimeNamespaces
from cri_py.shim.launcher import last_capability
from cri_py.shim.spec import (
    EXIT_FILE,
    LOG_FILE,
    SHIM_SPEC_FILE,
    SOCKET_FILE,
    ShimSpec,
    write_sysctls,
)
from cri_py.shim.sync import ContainerError

# The pod's PID 1 runs as nobody (as kubelet's pause image does, with 65535).
NOBODY = 65534


def _report(line: dict[str, Any]) -> None:
    os.write(1, (json.dumps(line) + "\n").encode())


def _detach_stdio(log_path: Path | None) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log_path else null
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in {null, out}:
        if fd > 2:
            os.close(fd)


def create_namespaces(spec: ShimSpec) -> None:
    """unshare the pod's namespaces (not PID: that one applies to children only) and fill them;
    a network namespace the daemon made (`net_path`) is joined instead."""
    flags = 0
    if spec.net_path:
        join_namespace(spec.net_path, syscalls.CLONE_NEWNET)
    elif spec.new_net:
        flags |= syscalls.CLONE_NEWNET
    if spec.new_ipc:
        flags |= syscalls.CLONE_NEWIPC
    if spec.new_uts:
        flags |= syscalls.CLONE_NEWUTS
    if spec.uid_map:
        _enter_pod_user_namespace(spec, flags)
    else:
        if flags:
            syscalls.unshare(flags)
        write_sysctls(spec.sysctls)
    if spec.new_uts and spec.hostname:
        socket.sethostname(spec.hostname)


def _enter_pod_user_namespace(spec: ShimSpec, flags: int) -> None:
    """The pod's user namespace, pinned at `spec.user_pin`, and the pod's net/IPC/UTS
    namespaces created inside it (so they belong to it), which this process then joins. The
    shim itself stays in the host's user namespace: it keeps the host root's powers it needs
    for containers' mounts and cgroups."""
    # The sysctls are the helper's to write: as the namespace's root (see UserNamespaceHelper).
    helper = UserNamespaceHelper(
        spec.uid_map, spec.gid_map, flags, lambda: write_sysctls(spec.sysctls)
    )
    try:
        for kind, flag in (
            ("net", syscalls.CLONE_NEWNET),
            ("ipc", syscalls.CLONE_NEWIPC),
            ("uts", syscalls.CLONE_NEWUTS),
        ):
            if flags & flag:
                fd = os.open(helper.ns_path(kind), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    syscalls.setns(fd, flag)
                finally:
                    os.close(fd)
        pin = spec.user_pin
        os.close(os.open(pin, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        syscalls.mount(helper.ns_path("user"), pin, None, syscalls.MS_BIND)
    finally:
        helper.close()


def confine_pid_init() -> None:
    """PID 1 of a pod-wide PID namespace is in view of every container of the pod: one allowed
    to ptrace (CAP_SYS_PTRACE) must not find a host root process with every capability there,
    nor the host's files behind /proc/1/root. So it keeps nothing: an empty read-only root in a
    mount namespace of its own, no descriptor but /dev/null, no capability, user nobody,
    non-dumpable. It only reaps and waits for signals, which need none of it."""
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    # Over /proc, which every host has, in this namespace only; then made the root (runc's
    # pivot_root(".", ".") with the old root detached).
    locked = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    syscalls.mount("tmpfs", "/proc", "tmpfs", locked, "size=4k,mode=555")
    os.chdir("/proc")
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", syscalls.MNT_DETACH)
    os.chdir("/")
    for bit in range(last_capability() + 1):
        syscalls.prctl(syscalls.PR_CAPBSET_DROP, bit)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)  # without PR_SET_KEEPCAPS: every capability set is emptied
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 2**31 - 1)


def run_pid_init() -> None:
    """PID 1 of the pod's PID namespace: reaps orphans until told to stop."""
    try:
        confine_pid_init()
    except OSError as e:
        # Not unconfined: without its init the pod's PID namespace cannot be pinned, and the
        # sandbox fails to start.
        os.write(2, f"shim: the pod's PID 1 cannot be confined: {e}\n".encode())
        os._exit(1)
    # SIGKILLed shim: its namespace's processes must not outlive it (stop relies on that).
    # Set after the user changed (that clears it). (getppid() is 0 here, the parent being
    # outside the namespace, so the usual re-check for a parent that died before this prctl is
    # not possible; the window is a few instructions.)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    wanted = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if signal.sigwait(wanted) != signal.SIGCHLD:
            os._exit(0)


class Shim:
    """The serving loop: one listening socket, its connections, SIGCHLD and SIGTERM."""

    def __init__(
        self,
        spec: ShimSpec,
        bundle: Path,
        listener: socket.socket,
        init_pid: int,
        runtime_namespaces: RuntimeNamespaces | None = None,
    ):
        self.spec = spec
        self.bundle = bundle
        self.listener = listener
        self.init_pid = init_pid
        self.started_at = time.time_ns()
        self.selector = selectors.DefaultSelector()
        self.connections: dict[socket.socket, tuple[protocol.Decoder, bytearray]] = {}
        self.stopping = ""
        self.init_exit: int | None = None
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        self.wake = wake_read
        self._wake_write = wake_write  # kept referenced: the wakeup fd must stay open
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ)
        self.selector.register(wake_read, selectors.EVENT_READ)
        self.subscribers: set[socket.socket] = set()
        # File descriptors a connection passed (SCM_RIGHTS) for its next exec-stream/attach.
        self.passed_fds: dict[socket.socket, list[int]] = {}
        self.containers = Containers(
            Hooks(self._add_reader, self._remove_reader, self._emit),
            spec.new_pid,
            runtime_namespaces,
        )

    def _add_reader(self, fd: int, callback: Any) -> None:
        self.selector.register(fd, selectors.EVENT_READ, callback)

    def _remove_reader(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)

    def _send(self, conn: socket.socket, message: protocol.Message) -> None:
        if conn not in self.connections:
            return
        self.connections[conn][1].extend(protocol.encode(message, EXEC_FRAME_BYTES))
        self._flush(conn)

    def _emit(self, event: messages.Exited) -> None:
        for conn in list(self.subscribers):
            self._send(conn, protocol.Event(event.NAME, event.to_wire()))

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = "SIGTERM"

    def status(self) -> messages.ShimStatus:
        return messages.ShimStatus(
            sandbox_id=self.spec.sandbox_id,
            pid=os.getpid(),
            init_pid=self.init_pid,
            init_exit=self.init_exit,
            started_at=self.started_at,
            containers=self.containers.list(),
            protocol=protocol.PROTOCOL_VERSION,
        )

    def handle(self, conn: socket.socket, request: protocol.Request) -> protocol.Response | None:
        """The answer to `request`, or None when it comes later (exec) or went out already
        (attach). A request this protocol cannot decode is answered "invalid"."""
        try:
            typed = messages.decode_request(request.method, request.params)
            reply = self._dispatch(conn, request.id, typed)
        except protocol.ProtocolError as e:
            for fd in self.passed_fds.pop(conn, []):
                os.close(fd)
            return protocol.Response(request.id, error=protocol.Error("invalid", str(e)))
        except ContainerError as e:
            return protocol.Response(request.id, error=protocol.Error(e.kind, str(e)))
        except (KeyError, TypeError, ValueError) as e:
            return protocol.Response(
                request.id, error=protocol.Error("invalid", f"{request.method}: bad params: {e}")
            )
        except OSError as e:
            return protocol.Response(
                request.id, error=protocol.Error("failed", f"{request.method}: {e}")
            )
        return None if reply is None else protocol.Response(request.id, result=reply.to_wire())

    def _dispatch(
        self, conn: socket.socket, request_id: int, request: messages.ShimRequest
    ) -> messages.Reply | None:
        containers = self.containers
        match request:
            case messages.Ping() | messages.Status():
                return self.status()
            case messages.Shutdown():
                self.stopping = "shutdown"
                return messages.Done()
            case messages.Subscribe():
                # This connection now also carries events (container exits).
                self.subscribers.add(conn)
                return messages.Subscribed(containers.list(), protocol.PROTOCOL_VERSION)
            case messages.Create():
                return containers.create(request)
            case messages.Start(id=container_id):
                return containers.start(container_id)
            case messages.Kill(id=container_id, signal=signum):
                containers.kill(container_id, signum)
                return messages.Done()
            case messages.ContainerStatus(id=container_id) | messages.Wait(id=container_id):
                return containers.get(container_id).view()
            case messages.Attach():
                self._attach(conn, request_id, request)
                return None
            case messages.CloseStdin(id=container_id):
                containers.close_stdin(container_id)
                return messages.Done()
            case messages.ReopenLog(id=container_id):
                containers.reopen_log(container_id)
                return messages.Done()
            case messages.Remove(id=container_id):
                containers.remove(container_id)
                return messages.Done()
            case messages.Exec() | messages.ExecStream():

                def respond(result: messages.ExecResult | None, kind: str, message: str) -> None:
                    error = protocol.Error(kind, message) if kind else None
                    wire = None if result is None else result.to_wire()
                    self._send(conn, protocol.Response(request_id, result=wire, error=error))

                if isinstance(request, messages.ExecStream):
                    containers.exec(request, respond, self.passed_fds.pop(conn, []))
                else:
                    containers.exec(request, respond)
                return None

    def _attach(self, conn: socket.socket, request_id: int, request: messages.Attach) -> None:
        # The answer carries the stdin fd (SCM_RIGHTS), so it goes out here and first.
        if self.connections[conn][1]:
            raise ContainerError("invalid", "attach must be alone on its connection")
        stdin_fd = self.containers.attach(
            request.id, self.passed_fds.pop(conn, []), request.streams, request.stdin
        )
        try:
            reply = messages.Attached(stdin_fd >= 0)
            frame = protocol.encode(protocol.Response(request_id, result=reply.to_wire()))
            fds = [stdin_fd] if stdin_fd >= 0 else []
            sent = socket.send_fds(conn, [frame], fds)
            self.connections[conn][1].extend(frame[sent:])
        finally:
            if stdin_fd >= 0:
                os.close(stdin_fd)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.init_pid:
                self.init_exit = os.waitstatus_to_exitcode(status)
            else:
                self.containers.on_child_exit(pid, status)

    def _close(self, conn: socket.socket) -> None:
        self.subscribers.discard(conn)
        for fd in self.passed_fds.pop(conn, []):
            os.close(fd)
        self.selector.unregister(conn)
        self.connections.pop(conn, None)
        conn.close()

    def _flush(self, conn: socket.socket) -> None:
        _, out = self.connections[conn]
        try:
            sent = conn.send(out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return
        del out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
        self.selector.modify(conn, events)

    def _on_readable(self, conn: socket.socket) -> None:
        decoder, out = self.connections[conn]
        try:
            data, fds, _, _ = socket.recv_fds(conn, 65536, 3, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if fds:
            self.passed_fds.setdefault(conn, []).extend(fds)
        if not data:
            self._close(conn)
            return
        try:
            messages = decoder.feed(data)
        except protocol.ProtocolError as e:
            print(f"shim: dropping a connection: {e}", file=sys.stderr, flush=True)
            self._close(conn)
            return
        for message in messages:
            if isinstance(message, protocol.Request):
                response = self.handle(conn, message)
                if response is not None:
                    out += protocol.encode(response)
        if conn in self.connections:
            self._flush(conn)

    def serve(self) -> str:
        while not self.stopping:
            deadline = self.containers.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            for key, mask in self.selector.select(timeout):
                sock = key.fileobj
                if callable(key.data):
                    key.data()
                elif sock is self.wake:
                    try:
                        while self.wake.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                elif sock is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    self.connections[conn] = (protocol.Decoder(), bytearray())
                    self.selector.register(conn, selectors.EVENT_READ)
                elif isinstance(sock, socket.socket) and sock in self.connections:
                    if mask & selectors.EVENT_READ:
                        self._on_readable(sock)
                    if sock in self.connections and mask & selectors.EVENT_WRITE:
                        self._flush(sock)
            self.containers.check_deadlines()
        # Answer what was asked (the shutdown's own reply) before going.
        for conn in list(self.connections):
            conn.setblocking(True)
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.sendall(self.connections[conn][1])
            self._close(conn)
        return self.stopping

    def shut_down(self, reason: str) -> None:
        # Containers first, with their exits recorded, before the pod's namespaces go.
        self.containers.kill_all()
        deadline = time.monotonic() + 5
        while self.containers.pending_exits() and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid != self.init_pid:
                self.containers.on_child_exit(pid, status)
            else:
                self.init_exit = os.waitstatus_to_exitcode(status)
        if self.init_pid and self.init_exit is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        (self.bundle / SOCKET_FILE).unlink(missing_ok=True)
        record = {"pid": os.getpid(), "reason": reason, "finished_at": time.time_ns()}
        tmp = self.bundle / f".{EXIT_FILE}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.bundle / EXIT_FILE)


def main(argv: list[str], *, detach: bool = True) -> int:
    """`detach`: fork the long-lived shim and return, as the exec'd process does so that the
    shim is nobody's child; the template's child is that already (see zygote.py) and becomes
    the shim itself, one fork fewer."""
    if len(argv) != 1:
        print("usage: python -m cri_py.shim <sandbox run dir>", file=sys.stderr)
        return 2
    bundle = Path(argv[0])
    try:
        os.chdir("/")
        spec = ShimSpec.from_json((bundle / SHIM_SPEC_FILE).read_text())
        # Before the pod's namespaces: where OCI hooks of the runtime's namespaces run.
        runtime_namespaces = RuntimeNamespaces.capture()
        create_namespaces(spec)
    except Exception as e:
        _report({"error": f"shim setup: {e}"})
        return 1
    if detach and os.fork() != 0:
        # The exec'd process leaves at once: the shim below is re-parented and outlives us.
        return 0
    init_pid = 0
    try:
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        if spec.new_pid:
            syscalls.unshare(syscalls.CLONE_NEWPID)
            init_pid = os.fork()
            if init_pid == 0:
                run_pid_init()
                os._exit(0)
        sock_path = bundle / SOCKET_FILE
        sock_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound by a relative name: the full path can exceed sun_path's 108 bytes.
        os.chdir(bundle)
        listener.bind(SOCKET_FILE)
        os.chdir("/")
        os.chmod(sock_path, 0o600)
        listener.listen(socket.SOMAXCONN)  # calls come in bursts; the loop accepts them all
        shim = Shim(spec, bundle, listener, init_pid, runtime_namespaces)
    except Exception as e:
        if init_pid > 0:
            os.kill(init_pid, signal.SIGKILL)
        _report({"error": f"shim start: {e}"})
        os._exit(1)
    _report({"pid": os.getpid(), "init_pid": init_pid})
    _detach_stdio(bundle / LOG_FILE)
    reason = shim.serve()
    shim.shut_down(reason)
    os._exit(0)
