"""The shim protocol's frames: round trips, partial reads, limits and garbage."""

from __future__ import annotations

import json
import struct

import pytest

from cri_py.shim.protocol import (
    Decoder,
    Error,
    Event,
    ProtocolError,
    Request,
    Response,
    encode,
)

MESSAGES = [
    Request(1, "ping"),
    Request(2, "create", {"id": "abc", "args": ["sh", "-c", "echo ü"]}),
    Response(1, result={"pid": 42}),
    Response(2, error=Error("not_found", "no container abc")),
    Event("exited", {"id": "abc", "code": 137}),
]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("message", MESSAGES)
def test_every_message_round_trips(message: object) -> None:
    assert Decoder().feed(encode(message)) == [message]  # type: ignore[arg-type]


def test_frames_split_at_every_byte_are_reassembled() -> None:
    data = b"".join(encode(m) for m in MESSAGES)
    decoder = Decoder()
    received = []
    for i in range(len(data)):
        received += decoder.feed(data[i : i + 1])
    assert received == MESSAGES
    assert decoder.pending == 0


def test_several_frames_in_one_read_all_come_out_in_order() -> None:
    assert Decoder().feed(b"".join(encode(m) for m in MESSAGES)) == MESSAGES


def test_truncated_frame_stays_pending() -> None:
    data = encode(Request(7, "status"))
    decoder = Decoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.pending == len(data) - 1


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    decoder = Decoder(max_frame=100)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.feed(struct.pack(">I", 101))


def test_encoding_an_oversized_message_fails() -> None:
    with pytest.raises(ValueError, match="exceeds the limit"):
        encode(Request(1, "x", {"data": "y" * 200}), max_frame=100)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2, 3]",
        b'{"id": 1}',
        b'{"id": "1", "method": "ping", "params": {}}',
        b'{"id": true, "method": "ping", "params": {}}',
        b'{"id": 1, "method": "ping", "params": []}',
        b'{"event": 3, "data": {}}',
        b'{"id": 1, "error": {"kind": "x"}}',
    ],
)
def test_garbage_is_a_protocol_error_and_breaks_the_stream(body: bytes) -> None:
    decoder = Decoder()
    with pytest.raises(ProtocolError):
        decoder.feed(frame(body))
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(encode(Request(1, "ping")))


def test_wire_format_is_big_endian_length_then_json() -> None:
    data = encode(Request(3, "ping"))
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert json.loads(data[4:]) == {"id": 3, "method": "ping", "params": {}}
