"""SPDY/3.1 framing against byte fixtures written from the spec (draft-mbelshe-httpbis-spdy-00
and the SPDY/3.1 changes), round trips, and fuzzed input."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cri_py.streaming import spdy


def test_dictionary_is_the_spdy3_one() -> None:
    # Section 2.6.10.1: 1423 bytes, starting with the length-prefixed "options".
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"utf-,*,enq=0.")
    # The DICTID peers check when inflating our header blocks.
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_ping_frame_bytes_and_decoding() -> None:
    fixture = bytes.fromhex("80030006 00000004 00000001")
    conn = spdy.Connection()
    conn.send_ping(1)
    assert conn.data_to_send() == fixture
    assert spdy.Connection().receive_data(fixture) == [spdy.Ping(1)]


def test_rst_stream_goaway_and_window_update_bytes() -> None:
    conn = spdy.Connection()
    conn.send_rst_stream(3, spdy.CANCEL)
    conn.send_goaway(5, 0)
    conn.send_window_update(7, 65536)
    assert conn.data_to_send() == bytes.fromhex(
        "80030003 00000008 00000003 00000005"
        "80030007 00000008 00000005 00000000"
        "80030009 00000008 00000007 00010000"
    )
    frames = spdy.Connection().receive_data(
        bytes.fromhex("80030003 00000008 00000003 00000005 80030007 00000008 00000005 00000001")
    )
    assert frames == [spdy.RstStream(3, spdy.CANCEL), spdy.GoAway(5, 1)]


def test_settings_frame_with_one_entry() -> None:
    # Flags 0x01 (PERSIST_VALUE) on SETTINGS_INITIAL_WINDOW_SIZE (7) = 65536.
    fixture = bytes.fromhex("80030004 0000000c 00000001 01000007 00010000")
    assert spdy.Connection().receive_data(fixture) == [spdy.Settings(False, ((1, 7, 65536),))]
    conn = spdy.Connection()
    conn.send_settings([(1, 7, 65536)])
    assert conn.data_to_send() == fixture


def test_data_frames_with_and_without_fin() -> None:
    fixture = bytes.fromhex("00000001 00000003") + b"abc" + bytes.fromhex("00000001 01000000")
    conn = spdy.Connection()
    conn.send_data(1, b"abc")
    conn.send_data(1, b"", fin=True)
    assert conn.data_to_send() == fixture
    assert spdy.Connection().receive_data(fixture) == [
        spdy.Data(1, b"abc", False),
        spdy.Data(1, b"", True),
    ]


def test_header_block_layout() -> None:
    block = spdy.encode_header_block({"streamType": ["error"], "x": ["a", "b"]})
    assert block == (
        b"\x00\x00\x00\x02"
        b"\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error"
        b"\x00\x00\x00\x01x\x00\x00\x00\x03a\x00b"
    )
    assert spdy.decode_header_block(block) == {"streamtype": ["error"], "x": ["a", "b"]}


def test_syn_stream_from_a_peer_decodes_with_the_dictionary() -> None:
    block = b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error"
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    compressed = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    # A zlib stream that names a preset dictionary (FDICT) by its Adler-32.
    assert compressed[:2] == b"\x78\xbb" and compressed[2:6] == struct.pack(">I", 0xE3C6A7C2)
    payload = struct.pack(">IIBB", 1, 0, 0, 0) + compressed
    frame = struct.pack(">HHI", 0x8003, 1, len(payload)) + payload
    [syn] = spdy.Connection().receive_data(frame)
    assert syn == spdy.SynStream(1, 0, 0, {"streamtype": ["error"]}, False, False)


def test_syn_reply_round_trip_shares_one_compression_context_per_direction() -> None:
    server, client = spdy.Connection(), spdy.Connection()
    server.send_syn_reply(1)
    server.send_syn_reply(3, {"a": ["b"]}, fin=True)
    wire = server.data_to_send()
    # The first block starts the zlib stream; the second continues it (no new zlib header).
    assert wire[:4] == bytes.fromhex("80030002") and wire[12:14] == b"\x78\xbb"
    assert client.receive_data(wire) == [
        spdy.SynReply(1, {}, False),
        spdy.SynReply(3, {"a": ["b"]}, True),
    ]


def test_syn_stream_round_trip_byte_by_byte() -> None:
    client, server = spdy.Connection(), spdy.Connection()
    client.send_syn_stream(1, {"streamtype": ["stdout"]})
    client.send_syn_stream(3, {"streamtype": ["stderr"]}, fin=True)
    client.send_data(1, b"x" * 100, fin=True)
    frames: list[spdy.Frame] = []
    for byte in client.data_to_send():
        frames += server.receive_data(bytes([byte]))
    assert frames == [
        spdy.SynStream(1, 0, 0, {"streamtype": ["stdout"]}, False, False),
        spdy.SynStream(3, 0, 0, {"streamtype": ["stderr"]}, True, False),
        spdy.Data(1, b"x" * 100, True),
    ]


def test_large_data_is_split_into_frames_within_the_limit() -> None:
    conn = spdy.Connection(max_frame=10)
    conn.send_data(1, b"y" * 25, fin=True)
    frames = spdy.Connection().receive_data(conn.data_to_send())
    assert [len(f.data) for f in frames if isinstance(f, spdy.Data)] == [10, 10, 5]
    assert [f.fin for f in frames if isinstance(f, spdy.Data)] == [False, False, True]


def test_unknown_control_frames_are_ignored_and_other_versions_refused() -> None:
    assert spdy.Connection().receive_data(bytes.fromhex("8003000a 00000000")) == [
        spdy.UnknownControl(10)
    ]
    conn = spdy.Connection()
    with pytest.raises(spdy.SpdyError, match="version 2"):
        conn.receive_data(bytes.fromhex("80020006 00000004 00000001"))
    with pytest.raises(spdy.SpdyError, match="already failed"):
        conn.receive_data(b"")


def test_a_header_bomb_is_refused() -> None:
    block = spdy.encode_header_block({"a": ["b" * (spdy.MAX_HEADER_BLOCK * 2)]})
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    payload = struct.pack(">I", 1) + deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    frame = struct.pack(">HHI", 0x8003, 2, len(payload)) + payload
    with pytest.raises(spdy.SpdyError, match="larger than"):
        spdy.Connection().receive_data(frame)


def test_bad_header_blocks_are_protocol_errors() -> None:
    for block in (b"\x00\x00", b"\x00\x00\x00\x01\x00\x00\x00\x05ab", b"\x00\x00\x00\x00x"):
        with pytest.raises(spdy.SpdyError):
            spdy.decode_header_block(block)
    with pytest.raises(spdy.SpdyError, match="lowercase"):
        spdy.decode_header_block(b"\x00\x00\x00\x01\x00\x00\x00\x01A\x00\x00\x00\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_input_raises_nothing_but_spdy_error(data: bytes) -> None:
    conn = spdy.Connection(max_frame=4096)
    with contextlib.suppress(spdy.SpdyError):
        conn.receive_data(data)


def _valid_session() -> bytes:
    client = spdy.Connection()
    client.send_syn_stream(1, {"streamtype": ["error"]})
    client.send_syn_stream(3, {"streamtype": ["stdin"], "port": ["80"]})
    client.send_data(3, b"hello", fin=True)
    client.send_ping(7)
    client.send_rst_stream(1, spdy.CANCEL)
    return client.data_to_send()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_truncated_and_chunked_valid_input_decodes_a_prefix(cut: int, chunks: list[int]) -> None:
    wire = _valid_session()
    whole = spdy.Connection().receive_data(wire)
    prefix = wire[: cut % (len(wire) + 1)]
    conn = spdy.Connection()
    frames: list[spdy.Frame] = []
    offset = 0
    for size in [*chunks, len(prefix)]:
        frames += conn.receive_data(prefix[offset : offset + size])
        offset += size
    assert frames == whole[: len(frames)]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_corrupted_valid_input_raises_nothing_but_spdy_error(position: int, value: int) -> None:
    wire = bytearray(_valid_session())
    wire[position % len(wire)] = value
    with contextlib.suppress(spdy.SpdyError):
        spdy.Connection().receive_data(bytes(wire))
