"""The daemon <-> shim wire protocol, sans-IO: bytes in, messages out, and back.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (an object).
Three messages ride in frames: a request (`id`, `method`, `params`), the response to it (same
`id`, then `result` or `error`) and an event the shim sends unasked (`event`, `data`). Sockets,
timeouts and retries belong to the callers (`cri_py.shim.client`, `cri_py.shim.main`).
Streaming sessions pass file descriptors (SCM_RIGHTS) alongside a frame instead of relaying
bytes: `exec-stream` hands the shim the command's stdin/stdout/stderr (pipes or a terminal the
daemon made), `attach` hands it pipes for the container's output and gets a dup of its stdin
back, so the bytes of a session never pass through the shim's single-threaded loop.
What each method takes and answers is typed in `cri_py.shim.messages`. Imported by the shim:
stdlib only.

Versions. A shim outlives the daemon that started it (the daemon is upgraded in place,
`KillMode=process`), so a daemon talks to shims of older releases. `PROTOCOL_VERSION` is what
this release's shim speaks; it reports it as `protocol` in its ping/status and subscribe
replies. A shim whose reply has no `protocol` speaks version 1, the format of the releases
before versions existed (up to 26f9c6f): the methods and keys of `messages` as they were then.
- The rule: a method or key, once released, keeps its name, its JSON type and its meaning.
  Adding a method, or a key a shim must understand to do the right thing, bumps the version;
  adding a reply key the daemon can do without (it reads a default) does not.
- The daemon speaks to a shim of any version from `OLDEST_SUPPORTED_VERSION` on, with the
  requests of that shim's version only: a feature that needs a newer shim asks
  `ShimClient.version` first and is refused for that pod with a message saying so (the pod has
  it once recreated). Dropping a version (raising `OLDEST_SUPPORTED_VERSION`) is a release
  note: its pods must be recreated before the upgrade.
- Version 2 adds `protocol` to the ping/status and subscribe replies; every request and reply
  of version 1 is unchanged.
- Version 3 (this release) runs the OCI hooks of a container's `config.json` (older shims
  ignore them): the daemon creates a container with hooks only in a pod whose shim is 3 or
  later (`HOOKS_VERSION`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 3
# The first version whose shim runs OCI hooks.
HOOKS_VERSION = 3
OLDEST_SUPPORTED_VERSION = 1

HEADER = struct.Struct(">I")
# Large enough for any request or status; ExecSync output will travel in its own frames.
MAX_FRAME_BYTES = 4 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol; drop the connection."""


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Error:
    # A short machine-readable kind ("not_found", "invalid", "failed") and the text for people.
    kind: str
    message: str


@dataclass(frozen=True)
class Response:
    id: int
    result: Mapping[str, Any] | None = None
    error: Error | None = None


@dataclass(frozen=True)
class Event:
    name: str
    data: Mapping[str, Any] = field(default_factory=dict)


Message = Request | Response | Event


def _to_data(message: Message) -> dict[str, Any]:
    if isinstance(message, Request):
        return {"id": message.id, "method": message.method, "params": dict(message.params)}
    if isinstance(message, Response):
        if message.error is not None:
            return {
                "id": message.id,
                "error": {"kind": message.error.kind, "message": message.error.message},
            }
        return {"id": message.id, "result": dict(message.result or {})}
    return {"event": message.name, "data": dict(message.data)}


def encode(message: Message, max_frame: int = MAX_FRAME_BYTES) -> bytes:
    """One frame holding `message`; ValueError when it would exceed `max_frame`."""
    body = json.dumps(_to_data(message), separators=(",", ":")).encode()
    if len(body) > max_frame:
        raise ValueError(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return HEADER.pack(len(body)) + body


def _expect(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"field {key!r} missing or of the wrong type")
    return value


def _from_data(data: Any) -> Message:
    if not isinstance(data, dict):
        raise ProtocolError("a frame must hold a JSON object")
    if "event" in data:
        return Event(_expect(data, "event", str), _expect(data, "data", dict))
    if "method" in data:
        return Request(
            _expect(data, "id", int), _expect(data, "method", str), _expect(data, "params", dict)
        )
    if "error" in data:
        error = _expect(data, "error", dict)
        return Response(
            _expect(data, "id", int),
            error=Error(_expect(error, "kind", str), _expect(error, "message", str)),
        )
    if "result" in data:
        return Response(_expect(data, "id", int), result=_expect(data, "result", dict))
    raise ProtocolError("a frame must be a request, a response or an event")


class Decoder:
    """Accumulates received bytes and yields the complete messages they hold.

    After a ProtocolError the stream is out of sync and the decoder refuses further input.
    """

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        self._broken = False

    def feed(self, data: bytes) -> list[Message]:
        if self._broken:
            raise ProtocolError("stream already failed")
        self._buffer += data
        messages: list[Message] = []
        try:
            while len(self._buffer) >= HEADER.size:
                (length,) = HEADER.unpack_from(self._buffer)
                if length > self._max_frame:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the limit of {self._max_frame}"
                    )
                end = HEADER.size + length
                if len(self._buffer) < end:
                    break
                body = bytes(self._buffer[HEADER.size : end])
                del self._buffer[:end]
                try:
                    data = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise ProtocolError(f"frame is not UTF-8 JSON: {e}") from None
                messages.append(_from_data(data))
        except ProtocolError:
            self._broken = True
            raise
        return messages

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete frame (non-zero at EOF: truncated)."""
        return len(self._buffer)
