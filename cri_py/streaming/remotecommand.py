"""Exec over a streaming session: the Kubernetes remotecommand protocols (v1-v4.channel.k8s.io)
on SPDY streams. The command itself runs through the runtime (the pod's shim) with pipes or a
terminal made here; this module copies bytes between them and the peer's streams and reports
the exit status on the error stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import termios
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from cri_py.errors import CriError
from cri_py.log import get_logger
from cri_py.streaming import fdio
from cri_py.streaming.requests import AttachRequest, ExecRequest, Runtime
from cri_py.streaming.session import DataStream, SpdySession, Stream

log = get_logger("cri_py.streaming")

V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
# In our order of preference (kubelet's).
PROTOCOLS = (V4, V3, V2, V1)
# The protocols (SPDY's and WebSocket's) whose error stream carries a Status object rather than
# a bare message.
STATUS_PROTOCOLS = (V4, "v4.base64.channel.k8s.io", "v5.channel.k8s.io")

STREAM_CREATION_TIMEOUT_SECONDS = 30.0
# After the command exits, how long its output may keep flowing (a background child holding
# the pipe) before the streams are closed without it.
OUTPUT_DRAIN_SECONDS = 2.0


def exit_status(code: int, command: tuple[str, ...]) -> dict[str, Any]:
    """The v4 error stream's Status for an exit code (client-go reads the code back from the
    ExitCode cause of a NonZeroExitCode failure)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": (
            f"command terminated with non-zero exit code: error executing command "
            f"{list(command)}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def failure_status(message: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"}


def expected_streams(request: ExecRequest | AttachRequest, protocol: str) -> set[str]:
    wanted = {"error"}
    for name, on in (("stdin", request.stdin), ("stdout", request.stdout)):
        if on:
            wanted.add(name)
    if request.stderr and not request.tty:
        wanted.add("stderr")
    if request.tty and protocol in (V3, V4):
        wanted.add("resize")
    return wanted


async def collect_streams(
    session: SpdySession, wanted: set[str], timeout: float
) -> dict[str, Stream] | None:
    """The streams the peer opens, by type, once every wanted one is there; None when the
    connection ends or `timeout` passes first."""
    streams: dict[str, Stream] = {}

    async def gather() -> bool:
        while not wanted <= streams.keys():
            stream = await session.accept()
            if stream is None:
                return False
            streams[stream.type] = stream
        return True

    try:
        complete = await asyncio.wait_for(gather(), timeout)
    except TimeoutError:
        log.warning("streams not created in time", wanted=sorted(wanted), got=sorted(streams))
        return None
    return streams if complete else None


def decode_resizes(text: str) -> tuple[list[tuple[int, int]], str]:
    """The complete {"Width": w, "Height": h} objects at the head of `text`, and the rest
    (an incomplete object waits for more data; garbage is dropped)."""
    sizes: list[tuple[int, int]] = []
    decoder = json.JSONDecoder()
    while text := text.lstrip():
        try:
            value, end = decoder.raw_decode(text)
        except json.JSONDecodeError:
            return sizes, text if len(text) <= 4096 else ""
        text = text[end:]
        if isinstance(value, dict):
            width, height = value.get("Width", 0), value.get("Height", 0)
            if type(width) is int and type(height) is int and width >= 0 and height >= 0:
                sizes.append((min(width, 0xFFFF), min(height, 0xFFFF)))
    return sizes, ""


def set_window_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


async def _pump_out(fd: int, stream: DataStream) -> None:
    while data := await fdio.read(fd):
        await stream.write(data)
    await stream.close()


async def _pump_in(stream: DataStream, fd: int, close_at_eof: bool) -> None:
    try:
        while data := await stream.read():
            await fdio.write_all(fd, data)
    except OSError:
        pass  # the command closed its stdin
    finally:
        if close_at_eof:
            os.close(fd)


async def _pump_resize(stream: DataStream, fd: int) -> None:
    pending = ""
    while data := await stream.read():
        sizes, pending = decode_resizes(pending + data.decode(errors="replace"))
        for width, height in sizes:
            with contextlib.suppress(OSError):
                set_window_size(fd, width, height)


async def serve_exec(
    session: SpdySession, request: ExecRequest, protocol: str, runtime: Runtime
) -> None:
    streams = await collect_streams(
        session, expected_streams(request, protocol), STREAM_CREATION_TIMEOUT_SECONDS
    )
    if streams is None:
        return
    await execute(streams, request, protocol, runtime, session.closed)


async def execute(
    streams: Mapping[str, DataStream],
    request: ExecRequest,
    protocol: str,
    runtime: Runtime,
    disconnected: asyncio.Event | None = None,
) -> None:
    await run_command(
        streams,
        request.tty,
        protocol,
        request.command,
        lambda stdio: runtime.exec_stream(
            request.container_id, request.command, request.tty, stdio
        ),
        lambda: runtime.open_terminal(request.container_id),
        disconnected,
    )


async def run_command(
    streams: Mapping[str, DataStream],
    tty: bool,
    protocol: str,
    command: tuple[str, ...],
    start: Callable[[list[int]], Coroutine[Any, Any, int]],
    open_terminal: Callable[[], tuple[int, int]] = os.openpty,
    disconnected: asyncio.Event | None = None,
) -> None:
    """Runs `start` with the fds for the command's side, copies between the other side and the
    streams, then reports how it ended on the error stream."""
    ours: list[int] = []  # the daemon's ends, closed at the end
    theirs: list[int] = []  # the command's ends, closed once it exited
    pumps: list[asyncio.Task[None]] = []
    outputs: list[asyncio.Task[None]] = []
    try:
        if tty:
            master, slave = open_terminal()
            os.set_blocking(master, False)
            ours.append(master)
            theirs.append(slave)
            stdio = [slave, slave, slave]
            if "stdout" in streams:
                outputs.append(asyncio.create_task(_pump_out(master, streams["stdout"])))
            if "stdin" in streams:
                stdin_copy = os.dup(master)
                os.set_blocking(stdin_copy, False)
                pumps.append(asyncio.create_task(_pump_in(streams["stdin"], stdin_copy, True)))
            if "resize" in streams:
                pumps.append(asyncio.create_task(_pump_resize(streams["resize"], master)))
        else:
            stdio = []
            for name in ("stdin", "stdout", "stderr"):
                if name not in streams:
                    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    theirs.append(null)
                    stdio.append(null)
                    continue
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                mine, child = (write_end, read_end) if name == "stdin" else (read_end, write_end)
                os.set_blocking(mine, False)
                theirs.append(child)
                stdio.append(child)
                if name == "stdin":
                    pumps.append(asyncio.create_task(_pump_in(streams[name], mine, True)))
                else:
                    ours.append(mine)
                    outputs.append(asyncio.create_task(_pump_out(mine, streams[name])))
        try:
            exited = asyncio.create_task(start(stdio))
            if disconnected is not None:
                gone = asyncio.create_task(disconnected.wait())
                await asyncio.wait({exited, gone}, return_when=asyncio.FIRST_COMPLETED)
                gone.cancel()
                if not exited.done():
                    # The client went away: hang up on the command as a terminal would (EOF
                    # on stdin, SIGHUP through its terminal, EPIPE on output); its exit is
                    # still awaited so that the shim's answer is not left unread.
                    for pump in pumps + outputs:
                        pump.cancel()
                    for fd in ours:
                        os.close(fd)
                    ours.clear()
            code = await exited
            status = exit_status(code, command)
        except CriError as e:
            code, status = -1, failure_status(str(e))
        for fd in theirs:
            os.close(fd)
        theirs.clear()
        if outputs:
            await asyncio.wait(outputs, timeout=OUTPUT_DRAIN_SECONDS)
        error = streams["error"]
        if protocol in STATUS_PROTOCOLS:
            await error.write(json.dumps(status).encode())
        elif status["status"] != "Success":
            await error.write(str(status.get("message", "")).encode())
        await error.close()
        for name in ("stdout", "stderr"):
            if name in streams:
                await streams[name].close()
    finally:
        for pump in pumps + outputs:
            pump.cancel()
        for pump in pumps + outputs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        for fd in ours + theirs:
            with contextlib.suppress(OSError):
                os.close(fd)


async def serve_attach(
    session: SpdySession, request: AttachRequest, protocol: str, runtime: Runtime
) -> None:
    """Joins the container's live stdio through its shim until the container exits or the
    client's stdin ends (kubelet's rule: then the client is detached)."""
    streams = await collect_streams(
        session, expected_streams(request, protocol), STREAM_CREATION_TIMEOUT_SECONDS
    )
    if streams is None:
        return
    await attach(streams, request, protocol, runtime)


async def attach(
    streams: Mapping[str, DataStream], request: AttachRequest, protocol: str, runtime: Runtime
) -> None:
    ours: list[int] = []
    theirs: dict[str, int] = {}
    tasks: list[asyncio.Task[None]] = []
    status: dict[str, Any] = {"metadata": {}, "status": "Success"}
    try:
        for name in ("stdout", "stderr"):
            if name in streams:
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(read_end, False)
                ours.append(read_end)
                theirs[name] = write_end
                tasks.append(asyncio.create_task(_pump_out(read_end, streams[name])))
        try:
            stdin_fd = await runtime.attach_stream(request.container_id, theirs, "stdin" in streams)
        except CriError as e:
            status = failure_status(str(e))
            stdin_fd = -1
        for fd in theirs.values():
            os.close(fd)
        theirs.clear()
        waits = list(tasks)
        if stdin_fd >= 0:
            os.set_blocking(stdin_fd, False)
            waits.append(asyncio.create_task(_pump_in(streams["stdin"], stdin_fd, True)))
            tasks.append(waits[-1])
        elif "stdin" in streams:
            # No stdin to give it to: the client's input still ends the attach.
            waits.append(asyncio.create_task(_discard(streams["stdin"])))
            tasks.append(waits[-1])
        if status["status"] == "Success" and waits:
            # Outputs end when the container exits. The client's stdin ending detaches it,
            # except with stdin_once and no tty: then the container's stdin is closed and
            # its outputs are followed to its exit (`echo data | kubectl attach -i` sees the
            # answer to its input, as with containerd and CRI-O).
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            stdin_ended = "stdin" in streams and tasks[-1].done()
            if stdin_ended and await runtime.close_stdin_once(request.container_id):
                outputs = tasks[:-1]
                if outputs:
                    await asyncio.wait(outputs)
        error = streams["error"]
        if protocol in STATUS_PROTOCOLS:
            await error.write(json.dumps(status).encode())
        elif status["status"] != "Success":
            await error.write(str(status.get("message", "")).encode())
        await error.close()
        for name in ("stdout", "stderr"):
            if name in streams:
                await streams[name].close()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fd in ours + list(theirs.values()):
            with contextlib.suppress(OSError):
                os.close(fd)


async def _discard(stream: DataStream) -> None:
    while await stream.read():
        pass
