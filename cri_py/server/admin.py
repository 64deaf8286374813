"""The daemon's end of the image admin channel (`cri_py.images.admin`): a root-only unix socket
on which `cri-py images import|export|tag|list` and the `ctr` stand-in reach the running image
service.

A thread accepts; each connection gets a thread that reads the request (and the descriptor sent
with it), runs the service call on the daemon's event loop and writes the answer. The long work
(reading an archive, unpacking, writing an export) happens where the service puts it: worker
threads, with the loop free for the CRI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cri_py.errors import CriError, InvalidArgument
from cri_py.images.admin import (
    MAX_MESSAGE_BYTES,
    ExportRequest,
    ImportRequest,
    Reply,
    Request,
    decode_request,
    describe,
    encode_reply,
    handle,
)
from cri_py.images.service import ImageService
from cri_py.log import get_logger

log = get_logger("cri_py.admin")

SOCKET_MODE = 0o600
_T = TypeVar("_T")


class AdminServer:
    """Serves `path` for `images`, whose methods run on `loop`."""

    def __init__(self, path: Path, images: ImageService, loop: asyncio.AbstractEventLoop) -> None:
        self._path = path
        self._images = images
        self._loop = loop
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            listener.bind(str(self._path))
        finally:
            os.umask(old)
        os.chmod(self._path, SOCKET_MODE)
        listener.listen(16)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="admin-accept", daemon=True)
        self._thread.start()
        log.info("admin socket", path=str(self._path))

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while (listener := self._listener) is not None:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(
                target=self._serve, args=(connection,), name="admin-call", daemon=True
            ).start()

    def _serve(self, connection: socket.socket) -> None:
        fds: list[int] = []
        with connection:
            try:
                data, fds = _receive(connection)
                reply = self._answer(connection, data, fds)
            except CriError as e:
                reply = Reply(error_code=e.code.name, error=str(e))
            except Exception as e:  # a bug: logged with its traceback, answered as INTERNAL
                log.error("admin request failed", exc_info=True)
                reply = Reply(error_code="INTERNAL", error=f"{type(e).__name__}: {e}")
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            with contextlib.suppress(OSError):
                connection.sendall(encode_reply(reply))

    def _run(self, work: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def _answer(self, connection: socket.socket, data: bytes, fds: list[int]) -> Reply:
        uid = _peer_uid(connection)
        if uid != os.geteuid():
            raise InvalidArgument(f"admin requests are root's only (peer uid {uid})")
        request: Request = decode_request(data)
        wants_fd = isinstance(request, ImportRequest | ExportRequest)
        if len(fds) != (1 if wants_fd else 0):
            raise InvalidArgument(f"{type(request).__name__}: expected {int(wants_fd)} descriptor")
        log.info("admin request", request=describe(request))
        if not wants_fd:
            return self._run(handle(self._images, request, None))
        # The descriptor is ours now: the file object closes it (and `fds` forgets it).
        mode = "rb" if isinstance(request, ImportRequest) else "wb"
        with open(fds.pop(), mode) as file:
            return self._run(handle(self._images, request, file))


def _peer_uid(connection: socket.socket) -> int:
    creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


def _receive(connection: socket.socket) -> tuple[bytes, list[int]]:
    """The request line and the descriptors sent with it (they come with its first bytes)."""
    data = b""
    fds: list[int] = []
    while b"\n" not in data:
        chunk, received, _, _ = socket.recv_fds(connection, 65536, 4)
        fds += received
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE_BYTES:
            for fd in fds:
                os.close(fd)
            raise InvalidArgument("admin request too large")
    return data, fds
