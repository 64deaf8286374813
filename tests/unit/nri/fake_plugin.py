"""An NRI plugin in Python for the tests, on cri-py's own framing (`cri_py.nri.mux`, `ttrpc`):
it registers, subscribes to the events it is given, records every request the runtime sends
and answers each with what its handler returns. (The protocol itself is checked against the
real Go stub by critest's NRI specs.)

As a program (`python -m tests.unit.nri.fake_plugin`), it is a plugin the runtime started
from its plugin dir: socket from NRI_PLUGIN_SOCKET, adding the annotation
`fake-plugin/started-by=runtime` to every container.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.message import Message

from cri_py.nri import api_pb2 as api
from cri_py.nri import mux, ttrpc
from cri_py.nri.connection import PLUGIN_SERVICE_NAME, RUNTIME_SERVICE_NAME

PLUGIN_METHODS = api.DESCRIPTOR.services_by_name["Plugin"].methods_by_name
RUNTIME_METHODS = api.DESCRIPTOR.services_by_name["Runtime"].methods_by_name

# A handler's answer: a reply message, None (the empty reply), or an exception (an error
# status with its text; ttrpc.Code.UNIMPLEMENTED if it is a NotImplementedError).
Handler = Callable[[Any], Message | None]


class RuntimeRefused(Exception):
    """The runtime answered a plugin's call with an error status."""


def mask(*events: int) -> int:
    bits = 0
    for event in events:
        bits |= 1 << (event - 1)
    return bits


class FakePlugin:
    def __init__(
        self,
        name: str,
        index: str,
        events: Iterable[int] = (),
        handlers: dict[str, Handler] | None = None,
    ) -> None:
        self.name = name
        self.index = index
        self.events = mask(*events)
        self.handlers = dict(handlers or {})
        self.calls: list[tuple[str, Any, float]] = []
        self.configured: api.ConfigureRequest | None = None
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._replies: dict[int, ttrpc.Message] = {}
        self._next_stream = 1
        self.closed = threading.Event()

    # --- connecting --------------------------------------------------------------------------

    def connect(self, path: str, register: bool = True) -> FakePlugin:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return self.attach(sock, register)

    def attach(self, sock: socket.socket, register: bool = True) -> FakePlugin:
        self._sock = sock
        threading.Thread(target=self._read_loop, daemon=True).start()
        if register:
            self.call_runtime(
                "RegisterPlugin",
                api.RegisterPluginRequest(
                    plugin_name=self.name, plugin_idx=self.index, NRI_version="v0.12.2"
                ),
                api.Empty,
            )
        return self

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        self.closed.set()

    # --- what the runtime sent -------------------------------------------------------------

    def methods(self) -> list[str]:
        with self._cond:
            return [m for m, _, _ in self.calls]

    def requests(self, method: str) -> list[Any]:
        with self._cond:
            return [r for m, r, _ in self.calls if m == method]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: timed out; calls: {self.methods()}")
                self._cond.wait(left)

    def wait_call(self, method: str, timeout: float = 10.0) -> Any:
        self.wait_for(lambda: bool(self.requests(method)), timeout)
        return self.requests(method)[-1]

    # --- calls to the runtime ----------------------------------------------------------------

    def call_runtime(
        self, method: str, request: Message, reply: type[Any], timeout: float = 10
    ) -> Any:
        assert self._sock is not None
        with self._cond:
            stream = self._next_stream
            self._next_stream += 2
        data = ttrpc.encode_request(
            stream, RUNTIME_SERVICE_NAME, method, request.SerializeToString()
        )
        self._send(mux.RUNTIME_SERVICE, data)
        with self._cond:
            if not self._cond.wait_for(lambda: stream in self._replies, timeout):
                raise AssertionError(f"{method}: no reply within {timeout}s")
            message = self._replies.pop(stream)
        response = ttrpc.decode_response(message)
        if response.status.code:
            raise RuntimeRefused(response.status.message)
        return reply.FromString(response.payload)

    def update_containers(self, updates: list[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        reply = self.call_runtime(
            "UpdateContainers",
            api.UpdateContainersRequest(update=updates),
            api.UpdateContainersResponse,
        )
        return list(reply.failed)

    # --- the wire ------------------------------------------------------------------------------

    def _send(self, conn_id: int, data: bytes) -> None:
        assert self._sock is not None
        with self._send_lock:
            self._sock.sendall(mux.encode_frames(conn_id, data))

    def _read_loop(self) -> None:
        assert self._sock is not None
        frames = mux.FrameReader()
        readers = {
            mux.PLUGIN_SERVICE: ttrpc.MessageReader(),
            mux.RUNTIME_SERVICE: ttrpc.MessageReader(),
        }
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                for conn_id, payload in frames.feed(data):
                    for message in readers[conn_id].feed(payload):
                        if conn_id == mux.RUNTIME_SERVICE:
                            with self._cond:
                                self._replies[message.stream_id] = message
                                self._cond.notify_all()
                        else:
                            threading.Thread(
                                target=self._serve, args=(message,), daemon=True
                            ).start()
        except OSError:
            pass
        finally:
            self.close()
            with self._cond:
                self._cond.notify_all()

    def _serve(self, message: ttrpc.Message) -> None:
        request = ttrpc.decode_request(message)
        assert request.service == PLUGIN_SERVICE_NAME, request.service
        method = PLUGIN_METHODS[request.method]
        body = getattr(api, method.input_type.name).FromString(request.payload)
        with self._cond:
            self.calls.append((request.method, body, time.monotonic()))
            self._cond.notify_all()
        reply_type = getattr(api, method.output_type.name)
        try:
            reply = self._answer(request.method, body, reply_type)
            data = ttrpc.encode_response(message.stream_id, reply.SerializeToString())
        except NotImplementedError as e:
            data = ttrpc.encode_response(message.stream_id, b"", ttrpc.Code.UNIMPLEMENTED, str(e))
        except Exception as e:
            data = ttrpc.encode_response(message.stream_id, b"", ttrpc.Code.UNKNOWN, str(e))
        with contextlib.suppress(OSError):
            self._send(mux.PLUGIN_SERVICE, data)

    def _answer(self, method: str, body: Any, reply_type: type[Any]) -> Message:
        if method == "Configure":
            self.configured = body
            return api.ConfigureResponse(events=self.events)
        handler = self.handlers.get(method)
        reply = handler(body) if handler is not None else None
        return reply if reply is not None else reply_type()


def main() -> None:
    """The plugin the runtime starts from its plugin dir (see the module's docstring)."""
    fd = int(os.environ["NRI_PLUGIN_SOCKET"])
    sock = socket.socket(fileno=fd)

    def annotate(request: api.CreateContainerRequest) -> api.CreateContainerResponse:
        reply = api.CreateContainerResponse()
        reply.adjust.annotations["fake-plugin/started-by"] = "runtime"
        reply.adjust.annotations["fake-plugin/name"] = os.environ.get("NRI_PLUGIN_NAME", "")
        if plugin.configured is not None and plugin.configured.config:
            reply.adjust.annotations["fake-plugin/config"] = plugin.configured.config.strip()
        return reply

    plugin = FakePlugin(
        os.environ["NRI_PLUGIN_NAME"],
        os.environ["NRI_PLUGIN_IDX"],
        [api.CREATE_CONTAINER],
        {"CreateContainer": annotate},
    )
    plugin.attach(sock)
    plugin.closed.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
