"""ttrpc framing: headers, a parser fed any split of the bytes, request/response envelopes."""

from __future__ import annotations

import pytest

from cri_py.nri import ttrpc


def test_message_header_is_length_stream_type_flags_big_endian() -> None:
    data = ttrpc.encode_message(7, ttrpc.MessageType.RESPONSE, b"abc", flags=0x4)
    assert data == b"\x00\x00\x00\x03" + b"\x00\x00\x00\x07" + b"\x02\x04" + b"abc"


def test_reader_yields_whole_messages_from_bytes_fed_one_at_a_time() -> None:
    stream = ttrpc.encode_message(1, ttrpc.MessageType.REQUEST, b"first") + ttrpc.encode_message(
        3, ttrpc.MessageType.REQUEST, b""
    )
    reader = ttrpc.MessageReader()
    messages = []
    for i in range(len(stream)):
        messages += reader.feed(stream[i : i + 1])
    assert [(m.stream_id, m.type, m.payload) for m in messages] == [
        (1, ttrpc.MessageType.REQUEST, b"first"),
        (3, ttrpc.MessageType.REQUEST, b""),
    ]
    assert reader.pending == 0


def test_reader_holds_an_incomplete_message() -> None:
    data = ttrpc.encode_message(1, ttrpc.MessageType.REQUEST, b"0123456789")
    reader = ttrpc.MessageReader()
    assert reader.feed(data[:-1]) == []
    assert reader.pending == len(data) - 1
    assert [m.payload for m in reader.feed(data[-1:])] == [b"0123456789"]


def test_a_message_over_4_mib_is_a_protocol_error_before_its_bytes_arrive() -> None:
    header = ttrpc.HEADER.pack(ttrpc.MAX_MESSAGE_LENGTH + 1, 1, 1, 0)
    with pytest.raises(ttrpc.ProtocolError, match="exceeds"):
        ttrpc.MessageReader().feed(header)
    with pytest.raises(ValueError):
        ttrpc.encode_message(1, ttrpc.MessageType.REQUEST, b"x" * (ttrpc.MAX_MESSAGE_LENGTH + 1))


def test_request_envelope_round_trips_with_its_deadline() -> None:
    data = ttrpc.encode_request(5, "nri.pkg.api.v1alpha1.Plugin", "Configure", b"\x01", 2_000_000)
    (message,) = ttrpc.MessageReader().feed(data)
    request = ttrpc.decode_request(message)
    assert (request.service, request.method, request.payload, request.timeout_nano) == (
        "nri.pkg.api.v1alpha1.Plugin",
        "Configure",
        b"\x01",
        2_000_000,
    )


def test_client_streams_must_be_odd() -> None:
    data = ttrpc.encode_request(2, "s", "m", b"")
    (message,) = ttrpc.MessageReader().feed(data)
    with pytest.raises(ttrpc.ProtocolError, match="odd"):
        ttrpc.decode_request(message)


def test_error_response_carries_code_and_message_ok_carries_no_status() -> None:
    (error,) = ttrpc.MessageReader().feed(
        ttrpc.encode_response(1, b"", ttrpc.Code.UNIMPLEMENTED, "method Foo")
    )
    response = ttrpc.decode_response(error)
    assert (response.status.code, response.status.message) == (12, "method Foo")
    (ok,) = ttrpc.MessageReader().feed(ttrpc.encode_response(3, b"payload"))
    response = ttrpc.decode_response(ok)
    assert not response.HasField("status") and response.payload == b"payload"


def test_garbage_envelope_and_wrong_types_are_protocol_errors() -> None:
    with pytest.raises(ttrpc.ProtocolError):
        ttrpc.decode_response(ttrpc.Message(1, ttrpc.MessageType.RESPONSE, 0, b"\xff\xff\xff"))
    with pytest.raises(ttrpc.ProtocolError, match="expected a ttrpc response"):
        ttrpc.decode_response(ttrpc.Message(1, ttrpc.MessageType.REQUEST, 0, b""))
    with pytest.raises(ttrpc.ProtocolError, match="expected a ttrpc request"):
        ttrpc.decode_request(ttrpc.Message(1, ttrpc.MessageType.DATA, 0, b""))
