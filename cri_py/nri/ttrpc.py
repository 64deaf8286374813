"""ttrpc framing, sans-IO: the 10-byte message header, a parser that turns bytes into messages,
and the request / response envelopes (github.com/containerd/ttrpc v1.2.7, unary calls only:
all NRI uses). The sockets are `connection.py`'s.

A message is `length(4) stream_id(4) type(1) flags(1)`, big-endian, then `length` bytes. A
client opens a stream per call with an odd, increasing ID and sends one REQUEST; the server
answers with one RESPONSE on that ID. Both sides of one NRI connection are clients and
servers, each on its own multiplexed channel (`mux.py`), so each channel has one direction.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cri_py.nri import ttrpc_pb2

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = HEADER.size  # 10
# Go's ttrpc refuses (and discards) a message longer than this.
MAX_MESSAGE_LENGTH = 4 << 20


class MessageType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


# Request flags (a unary request has none).
FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4


class Code(enum.IntEnum):
    """The gRPC status codes ttrpc's Status carries (the ones NRI's peers use)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class ProtocolError(Exception):
    """The peer broke the framing: the connection cannot go on."""


@dataclass(frozen=True)
class Message:
    stream_id: int
    type: int
    flags: int
    payload: bytes


def encode_message(stream_id: int, type: MessageType, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MAX_MESSAGE_LENGTH:
        raise ValueError(f"ttrpc message of {len(payload)} bytes exceeds {MAX_MESSAGE_LENGTH}")
    return HEADER.pack(len(payload), stream_id, type, flags) + payload


class MessageReader:
    """Bytes of one ttrpc channel in, whole messages out (in order)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER_LENGTH:
            length, stream_id, kind, flags = HEADER.unpack_from(self._buffer)
            if length > MAX_MESSAGE_LENGTH:
                raise ProtocolError(
                    f"ttrpc message of {length} bytes exceeds the maximum {MAX_MESSAGE_LENGTH}"
                )
            end = HEADER_LENGTH + length
            if len(self._buffer) < end:
                break
            messages.append(Message(stream_id, kind, flags, bytes(self._buffer[HEADER_LENGTH:end])))
            del self._buffer[:end]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buffer)


def encode_request(
    stream_id: int, service: str, method: str, payload: bytes, timeout_ns: int = 0
) -> bytes:
    request = ttrpc_pb2.Request(
        service=service, method=method, payload=payload, timeout_nano=timeout_ns
    )
    return encode_message(stream_id, MessageType.REQUEST, request.SerializeToString())


def encode_response(
    stream_id: int, payload: bytes, code: int = Code.OK, message: str = ""
) -> bytes:
    response = ttrpc_pb2.Response(payload=payload)
    if code != Code.OK:
        response.status.code = code
        response.status.message = message
    return encode_message(stream_id, MessageType.RESPONSE, response.SerializeToString())


def decode_request(message: Message) -> ttrpc_pb2.Request:
    if message.type != MessageType.REQUEST:
        raise ProtocolError(f"expected a ttrpc request, got message type {message.type}")
    if message.stream_id % 2 == 0:
        raise ProtocolError(f"client stream IDs are odd, got {message.stream_id}")
    request = ttrpc_pb2.Request()
    try:
        request.ParseFromString(message.payload)
    except Exception as e:  # protobuf's DecodeError
        raise ProtocolError(f"undecodable ttrpc request: {e}") from None
    return request


def decode_response(message: Message) -> ttrpc_pb2.Response:
    if message.type != MessageType.RESPONSE:
        raise ProtocolError(f"expected a ttrpc response, got message type {message.type}")
    response = ttrpc_pb2.Response()
    try:
        response.ParseFromString(message.payload)
    except Exception as e:
        raise ProtocolError(f"undecodable ttrpc response: {e}") from None
    return response
