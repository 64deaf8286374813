"""The shim template: one process, started once by the daemon, that has already imported the
shim's code and forks a pod's shim on request.

A shim started with fork+exec pays a Python interpreter start and the shim's imports (~100 ms,
most of RunPodSandbox) and private copies of every page it loads. Forked from this template it
pays a fork (~2 ms) and shares the template's pages copy-on-write, until it writes them.

Protocol, on the SOCK_SEQPACKET socket inherited as fd 0: the daemon sends one datagram per
shim, `{"bundle": <dir>}` with two fds (SCM_RIGHTS): the write end of the pipe the shim reports
on, and the shim's log file. The template forks a child that takes them as stdout and stderr and
runs the shim's `main` as `python -m cri_py.shim <dir>` would, except that it does not fork
again: the exec'd process forks so that its shim is nobody's child, and the template's child,
in a session of its own, already is a process the daemon never waits for. The child is forked
ahead of its request (`Spare`) and takes the datagram as it came. The template answers
`{"pid": <child>}` at once, or `{"error": ..}`; the shim reports on the pipe as always. The
kernel reaps the template's children (SIGCHLD ignored). End of file on the socket (the daemon
is gone) ends the template; the shims live on, re-parented.

Imports stay few (stdlib and the shim's own): every pod shares, then copies, these pages.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
from pathlib import Path

from cri_py.shim.launcher import last_capability
from cri_py.shim.main import main as shim_main
from cri_py.shim.spec import TEMPLATE_MODULE

MAX_REQUEST_BYTES = 4096
CONTROL_FD = 0


def set_cmdline(args: list[str]) -> None:
    """Rewrites this process's /proc/<pid>/cmdline in place, within the argv space it was
    started with (NUL-padded). The memory is the kernel's copy of argv, which Python no
    longer reads after start-up; a title that does not fit is left as it was."""
    stat = Path("/proc/self/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])  # stat fields 48 and 49
    title = b"\0".join(a.encode() for a in args) + b"\0"
    if len(title) > arg_end - arg_start:
        return
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(arg_start)
        mem.write(title.ljust(arg_end - arg_start, b"\0"))


def _child(bundle: str, report_fd: int, log_fd: int) -> int:
    """In the forked child: become the shim `python -m cri_py.shim <bundle>` would fork."""
    # The template's ignored SIGCHLD would let the kernel reap the shim's own children,
    # containers included, before their exit status is read.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(report_fd, 1)
    os.dup2(log_fd, 2)
    # Nothing of the template's (its control socket above all) leaks into the pod's shim.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
    set_cmdline([sys.executable, "-S", "-m", "cri_py.shim", bundle])
    return shim_main([bundle], detach=False)


def _bundle(request: bytes) -> str:
    return str(json.loads(request)["bundle"])


def _answer(control: socket.socket, reply: dict[str, object]) -> None:
    control.send(json.dumps(reply).encode())


class Spare:
    """The next shim, forked ahead of its request and waiting on a socket of its own for the
    datagram the daemon sent: the fork (copying the template's page tables) and its first
    page faults happen while nobody waits. Forked again after each hand-over, once the
    request's fds are closed here, so that no spare holds another pod's pipe."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                code = _wait_for_request(theirs)
            except BaseException as e:  # the child must never return into the template
                os.write(2, f"shim template child: {e!r}\n".encode())
            os._exit(code)
        theirs.close()
        self.pid = pid
        self.channel = ours

    def hand_over(self, request: bytes, fds: list[int]) -> None:
        try:
            socket.send_fds(self.channel, [request], fds)
        finally:
            self.channel.close()


def _wait_for_request(channel: socket.socket) -> int:
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(channel, MAX_REQUEST_BYTES, 2)
            break
        except InterruptedError:
            continue
    if not data:
        return 0  # the template is gone
    return _child(_bundle(data), fds[0], fds[1])


def _spare() -> Spare | None:
    try:
        return Spare()
    except OSError as e:  # no process to spare now (EAGAIN): forked when a request comes
        os.write(2, f"shim template: no spare shim: {e}\n".encode())
        return None


def serve(control: socket.socket) -> int:
    spare = _spare()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_REQUEST_BYTES, 2)
        except InterruptedError:
            continue
        if not data:
            return 0  # the spare sees its socket close with this process
        try:
            _bundle(data)  # checked here: a request the spare cannot take is answered now
            if len(fds) != 2:
                raise ValueError(f"expected 2 fds, got {len(fds)}")
            for attempt in (1, 2):
                taker, spare = spare or Spare(), None
                try:
                    taker.hand_over(data, fds)
                    break
                except OSError:  # the spare died waiting (killed): a fresh one takes it
                    if attempt == 2:
                        raise
            _answer(control, {"pid": taker.pid})
        except (ValueError, KeyError, TypeError, OSError) as e:
            _answer(control, {"error": f"shim template: {e}"})
        finally:
            for fd in fds:
                os.close(fd)
        if spare is None:
            spare = _spare()


def run() -> int:
    set_cmdline([sys.executable, "-S", "-m", TEMPLATE_MODULE])
    # The kernel's answer (41 prctl calls) is inherited by every shim and setup process.
    last_capability()
    # What is alive now (the imported shim) moves out of the collector's reach: a collection
    # in a shim would otherwise write to every object's header and unshare those pages.
    gc.collect()
    gc.freeze()
    control = socket.socket(fileno=CONTROL_FD)
    # The daemon's process group gets terminal signals; a template outliving it has no use.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims are never waited for here
    os.write(1, b"ready\n")
    os.close(1)
    os.open(os.devnull, os.O_WRONLY)  # fd 1 again, so nothing else lands there
    return serve(control)


if __name__ == "__main__":
    sys.exit(run())
