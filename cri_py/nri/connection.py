"""One NRI plugin's socket, the I/O around the sans-IO framing (`mux.py`, `ttrpc.py`): a reader
thread, calls from the runtime to the plugin (PLUGIN_SERVICE channel, we are the client) and
calls from the plugin to the runtime (RUNTIME_SERVICE channel, we serve them on their own
threads, so that a plugin may call UpdateContainers while we wait for its answer).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from cri_py.log import get_logger
from cri_py.nri import mux, ttrpc, ttrpc_pb2

log = get_logger("cri_py.nri")

PLUGIN_SERVICE_NAME = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE_NAME = "nri.pkg.api.v1alpha1.Runtime"

R = TypeVar("R", bound=Message)

# A request the plugin sent us: (method, payload) -> (reply payload, code, message).
Handler = Callable[[str, str, bytes], tuple[bytes, int, str]]


class CallError(Exception):
    """A call to the plugin failed. `fatal`: the plugin is unusable (closed, timed out,
    garbled), as NRI's isFatalError; otherwise the plugin answered with an error status."""

    def __init__(
        self, message: str, code: int = ttrpc.Code.UNKNOWN, fatal: bool = False, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal
        # What the plugin said, for an error status.
        self.reason = reason or message


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.message: ttrpc.Message | None = None


class PluginConnection:
    def __init__(self, sock: socket.socket, handler: Handler, name: str = "plugin") -> None:
        self.name = name
        self._sock = sock
        self._handler = handler
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._next_stream = 1
        self._closed = threading.Event()
        self._close_callbacks: list[Callable[[], None]] = []
        # Set by a request handler refusing the plugin: the answer goes out, then the end.
        self.close_after_reply = False
        self._reader = threading.Thread(target=self._read_loop, name="nri-conn", daemon=True)

    def start(self) -> None:
        self._reader.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def on_close(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._closed.is_set():
                self._close_callbacks.append(callback)
                return
        callback()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def peer_pid(self) -> int:
        try:
            creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return 0
        return int.from_bytes(creds[:4], "little")

    # --- calls to the plugin --------------------------------------------------------------

    def call(self, method: str, request: Message, reply: type[R], timeout: float) -> R:
        if self._closed.is_set():
            raise CallError(f"{self.name}: connection closed", ttrpc.Code.UNAVAILABLE, fatal=True)
        pending = _Pending()
        with self._lock:
            stream_id = self._next_stream
            self._next_stream += 2
            self._pending[stream_id] = pending
        try:
            data = ttrpc.encode_request(
                stream_id,
                PLUGIN_SERVICE_NAME,
                method,
                request.SerializeToString(),
                int(timeout * 1e9),
            )
            self._send(mux.PLUGIN_SERVICE, data)
            if not pending.done.wait(timeout):
                raise CallError(
                    f"{self.name}: {method} timed out after {timeout:g}s",
                    ttrpc.Code.DEADLINE_EXCEEDED,
                    fatal=True,
                )
        finally:
            with self._lock:
                self._pending.pop(stream_id, None)
        if pending.message is None:
            raise CallError(f"{self.name}: connection closed", ttrpc.Code.UNAVAILABLE, fatal=True)
        try:
            response = ttrpc.decode_response(pending.message)
        except ttrpc.ProtocolError as e:
            self.close()
            raise CallError(f"{self.name}: {e}", ttrpc.Code.INTERNAL, fatal=True) from None
        if response.HasField("status") and response.status.code != ttrpc.Code.OK:
            raise CallError(
                f"{self.name}: {method}: {response.status.message}",
                response.status.code,
                reason=response.status.message,
            )
        result = reply()
        try:
            result.ParseFromString(response.payload)
        except DecodeError as e:
            self.close()
            raise CallError(f"{self.name}: undecodable {method} reply: {e}", fatal=True) from None
        return result

    def _send(self, conn_id: int, message: bytes) -> None:
        frames = mux.encode_frames(conn_id, message)
        try:
            with self._send_lock:
                self._sock.sendall(frames)
        except OSError as e:
            self.close()
            raise CallError(f"{self.name}: {e}", ttrpc.Code.UNAVAILABLE, fatal=True) from None

    # --- the reader -----------------------------------------------------------------------

    def _read_loop(self) -> None:
        frames = mux.FrameReader()
        channels = {
            mux.PLUGIN_SERVICE: ttrpc.MessageReader(),
            mux.RUNTIME_SERVICE: ttrpc.MessageReader(),
        }
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                for conn_id, payload in frames.feed(data):
                    reader = channels.get(conn_id)
                    if reader is None:
                        continue  # as Go's mux: frames for a channel nobody opened are dropped
                    for message in reader.feed(payload):
                        if conn_id == mux.PLUGIN_SERVICE:
                            self._on_response(message)
                        else:
                            self._on_request(message)
        except (OSError, mux.MuxError, ttrpc.ProtocolError) as e:
            if not self._closed.is_set():
                log.warning("NRI plugin connection broken", plugin=self.name, error=str(e))
        finally:
            self.close()

    def _on_response(self, message: ttrpc.Message) -> None:
        with self._lock:
            pending = self._pending.get(message.stream_id)
        if pending is None:
            return  # the call timed out already
        pending.message = message
        pending.done.set()

    def _on_request(self, message: ttrpc.Message) -> None:
        request = ttrpc.decode_request(message)
        threading.Thread(
            target=self._serve,
            args=(message.stream_id, request),
            name="nri-request",
            daemon=True,
        ).start()

    def _serve(self, stream_id: int, request: ttrpc_pb2.Request) -> None:
        try:
            payload, code, text = self._handler(request.service, request.method, request.payload)
        except Exception as e:  # a bug of ours: the plugin gets INTERNAL, we get the traceback
            log.error("NRI request failed", exc_info=True, plugin=self.name, method=request.method)
            payload, code, text = b"", ttrpc.Code.INTERNAL, str(e)
        with contextlib.suppress(CallError):
            self._send(mux.RUNTIME_SERVICE, ttrpc.encode_response(stream_id, payload, code, text))
        if self.close_after_reply:
            self.close()

    # --- the end --------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            pending = list(self._pending.values())
            callbacks, self._close_callbacks = self._close_callbacks, []
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        for waiter in pending:
            waiter.done.set()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.error("NRI close callback failed", exc_info=True, plugin=self.name)
