"""NRI's connection multiplexer, sans-IO (github.com/containerd/nri pkg/net/multiplex): one
unix socket carries several byte streams, each frame `conn_id(4) length(4)` big-endian then
`length` bytes. NRI uses two: on PLUGIN_SERVICE the runtime calls the plugin, on
RUNTIME_SERVICE the plugin calls the runtime.

Frames we send hold at most `MAX_SEND_FRAME` bytes, each within one ttrpc message: Go's side
hands a whole frame to each read of its 4096-byte buffered reader, so a larger frame could be
refused there (ENOMEM).
"""

from __future__ import annotations

import struct

PLUGIN_SERVICE = 1
RUNTIME_SERVICE = 2

FRAME_HEADER = struct.Struct(">II")
FRAME_HEADER_LENGTH = FRAME_HEADER.size  # 8
MAX_SEND_FRAME = 4096
# What Go's mux writes at most in one frame: a ttrpc header plus its largest message.
MAX_RECEIVE_FRAME = 10 + (4 << 20)


class MuxError(Exception):
    """The peer sent a frame no multiplexer would: the connection cannot go on."""


def encode_frames(conn_id: int, data: bytes) -> bytes:
    """`data` (one whole ttrpc message) as frames of `conn_id`."""
    if not data:
        return b""
    out = bytearray()
    for start in range(0, len(data), MAX_SEND_FRAME):
        chunk = data[start : start + MAX_SEND_FRAME]
        out += FRAME_HEADER.pack(conn_id, len(chunk))
        out += chunk
    return bytes(out)


class FrameReader:
    """Bytes of the trunk in, `(conn_id, payload)` frames out (in order)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= FRAME_HEADER_LENGTH:
            conn_id, length = FRAME_HEADER.unpack_from(self._buffer)
            if length > MAX_RECEIVE_FRAME:
                raise MuxError(f"mux frame of {length} bytes exceeds {MAX_RECEIVE_FRAME}")
            end = FRAME_HEADER_LENGTH + length
            if len(self._buffer) < end:
                break
            frames.append((conn_id, bytes(self._buffer[FRAME_HEADER_LENGTH:end])))
            del self._buffer[:end]
        return frames
