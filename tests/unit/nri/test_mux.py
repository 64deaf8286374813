"""NRI's multiplexer framing: frames per channel, reassembly, bounds."""

from __future__ import annotations

import pytest

from cri_py.nri import mux


def test_a_small_message_is_one_frame_with_channel_and_length() -> None:
    assert mux.encode_frames(2, b"hello") == b"\x00\x00\x00\x02\x00\x00\x00\x05hello"
    assert mux.encode_frames(1, b"") == b""


def test_a_large_message_is_split_into_frames_go_can_read_with_4096_byte_reads() -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    encoded = mux.encode_frames(1, data)
    frames = mux.FrameReader().feed(encoded)
    assert [len(p) for _, p in frames] == [4096, 4096, 2048]
    assert all(c == 1 for c, _ in frames)
    assert b"".join(p for _, p in frames) == data


def test_reader_reassembles_interleaved_channels_fed_in_odd_pieces() -> None:
    stream = mux.encode_frames(1, b"a" * 5000) + mux.encode_frames(2, b"bb") + b""
    reader = mux.FrameReader()
    frames = []
    for start in range(0, len(stream), 7):
        frames += reader.feed(stream[start : start + 7])
    assert [(c, len(p)) for c, p in frames] == [(1, 4096), (1, 904), (2, 2)]


def test_an_oversized_frame_is_refused() -> None:
    header = mux.FRAME_HEADER.pack(1, mux.MAX_RECEIVE_FRAME + 1)
    with pytest.raises(mux.MuxError):
        mux.FrameReader().feed(header)
