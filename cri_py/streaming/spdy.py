"""SPDY/3.1 framing, sans-IO: the frame subset Kubernetes peers use, bytes in, events out.

`Connection.receive_data` turns received bytes into frames; the `send_*` methods queue frames in
`data_to_send()`. Header blocks are zlib streams primed with the SPDY/3 dictionary, one context
per direction for the whole connection (spec section 2.6.10). Sockets, streams' meaning and
flow-control policy belong to the caller; Kubernetes peers (spdystream) send no WINDOW_UPDATEs
and ignore ours, so none are sent.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes (section 2.4.2).
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6
STREAM_ALREADY_CLOSED = 9

MAX_FRAME_LENGTH = 0xFFFFFF
# Decompressed header blocks are bounded: a small compressed block must not inflate into
# gigabytes (a "zlib bomb").
MAX_HEADER_BLOCK = 256 * 1024

_WORDS = (
    (
        "options head post put delete trace accept accept-charset accept-encoding accept-language "
        "accept-ranges age allow authorization cache-control connection content-base "
        "content-encoding content-language content-length content-location content-md5 "
        "content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
        "method get status\t200 OK\tversion\tHTTP/1.1\turl\tpublic\tset-cookie\tkeep-alive\torigin"
    )
    .replace(" ", "\t")
    .replace("200\tOK", "200 OK")
    .split("\t")
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
# The header compression dictionary of SPDY/3 (section 2.6.10.1): each of the words with its
# 32-bit big-endian length in front, then the tail as is.
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()

Headers = Mapping[str, Sequence[str]]


class SpdyError(Exception):
    """The peer broke the protocol; the connection cannot continue (send GOAWAY and close)."""


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    associated_id: int
    priority: int
    headers: dict[str, list[str]]
    fin: bool
    unidirectional: bool


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: dict[str, list[str]]
    fin: bool


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: dict[str, list[str]]
    fin: bool


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    clear: bool
    entries: tuple[tuple[int, int, int], ...]  # (flags, id, value)


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True)
class UnknownControl:
    """A control frame type this implementation does not know; the spec says ignore it."""

    frame_type: int


Frame = (
    SynStream
    | SynReply
    | HeadersFrame
    | Data
    | RstStream
    | Settings
    | Ping
    | GoAway
    | WindowUpdate
    | UnknownControl
)


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: names lowercased, several values joined by NUL."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        raw_name = name.lower().encode()
        raw_value = b"\0".join(v.encode() for v in values)
        out.append(struct.pack(">I", len(raw_name)) + raw_name)
        out.append(struct.pack(">I", len(raw_value)) + raw_value)
    return b"".join(out)


def decode_header_block(block: bytes) -> dict[str, list[str]]:
    def take(offset: int) -> tuple[bytes, int]:
        if offset + 4 > len(block):
            raise SpdyError("header block truncated")
        (length,) = struct.unpack_from(">I", block, offset)
        end = offset + 4 + length
        if end > len(block):
            raise SpdyError("header block truncated")
        return block[offset + 4 : end], end

    if len(block) < 4:
        raise SpdyError("header block truncated")
    (count,) = struct.unpack_from(">I", block)
    offset = 4
    headers: dict[str, list[str]] = {}
    for _ in range(count):
        raw_name, offset = take(offset)
        raw_value, offset = take(offset)
        if not raw_name:
            raise SpdyError("empty header name")
        try:
            name, value = raw_name.decode(), raw_value.decode()
        except UnicodeDecodeError:
            raise SpdyError("header is not UTF-8") from None
        if name != name.lower():
            raise SpdyError(f"header name {name!r} is not lowercase")
        if name in headers:
            raise SpdyError(f"header {name!r} repeated")
        headers[name] = value.split("\0")
    if offset != len(block):
        raise SpdyError("trailing bytes after the header block")
    return headers


def control_frame(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError(f"frame payload of {len(payload)} bytes is too long")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    if len(data) > MAX_FRAME_LENGTH:
        raise ValueError(f"data of {len(data)} bytes is too long for one frame")
    flags = FLAG_FIN if fin else 0
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data


class Connection:
    """One SPDY/3.1 session's framing state: the two header compression contexts, the bytes
    received but not yet a whole frame, and the frames queued to send."""

    def __init__(self, max_frame: int = MAX_FRAME_LENGTH) -> None:
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zdict=DICTIONARY)
        self._buffer = bytearray()
        self._out = bytearray()
        self._max_frame = max_frame
        self._broken = False

    # --- receiving ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Frame]:
        """The frames completed by `data`; SpdyError (and no more input) when it is not SPDY."""
        if self._broken:
            raise SpdyError("connection already failed")
        self._buffer += data
        frames: list[Frame] = []
        try:
            while len(self._buffer) >= 8:
                word, flags_length = struct.unpack_from(">II", self._buffer)
                flags, length = flags_length >> 24, flags_length & 0xFFFFFF
                if length > self._max_frame:
                    raise SpdyError(f"frame of {length} bytes exceeds {self._max_frame}")
                if len(self._buffer) < 8 + length:
                    break
                payload = bytes(self._buffer[8 : 8 + length])
                del self._buffer[: 8 + length]
                if word & 0x80000000:
                    version, frame_type = (word >> 16) & 0x7FFF, word & 0xFFFF
                    if version != VERSION:
                        raise SpdyError(f"SPDY version {version} is not supported")
                    frames.append(self._control(frame_type, flags, payload))
                else:
                    frames.append(Data(word & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN)))
        except SpdyError:
            self._broken = True
            raise
        return frames

    def _headers(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as e:
            raise SpdyError(f"header block does not decompress: {e}") from None
        if self._inflate.unconsumed_tail:
            raise SpdyError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(raw)

    def _control(self, frame_type: int, flags: int, payload: bytes) -> Frame:
        fin = bool(flags & FLAG_FIN)

        def need(size: int) -> None:
            if len(payload) < size:
                raise SpdyError(f"control frame {frame_type} of {len(payload)} bytes is short")

        match frame_type:
            case 1:  # SYN_STREAM
                need(10)
                stream_id, associated = struct.unpack_from(">II", payload)
                return SynStream(
                    stream_id & 0x7FFFFFFF,
                    associated & 0x7FFFFFFF,
                    payload[8] >> 5,
                    self._headers(payload[10:]),
                    fin,
                    bool(flags & FLAG_UNIDIRECTIONAL),
                )
            case 2:  # SYN_REPLY
                need(4)
                (stream_id,) = struct.unpack_from(">I", payload)
                return SynReply(stream_id & 0x7FFFFFFF, self._headers(payload[4:]), fin)
            case 8:  # HEADERS
                need(4)
                (stream_id,) = struct.unpack_from(">I", payload)
                return HeadersFrame(stream_id & 0x7FFFFFFF, self._headers(payload[4:]), fin)
            case 3:  # RST_STREAM
                need(8)
                stream_id, status = struct.unpack_from(">II", payload)
                return RstStream(stream_id & 0x7FFFFFFF, status)
            case 4:  # SETTINGS
                need(4)
                (count,) = struct.unpack_from(">I", payload)
                if len(payload) != 4 + 8 * count:
                    raise SpdyError("SETTINGS length does not match its entry count")
                entries = []
                for i in range(count):
                    id_word, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                    entries.append((id_word >> 24, id_word & 0xFFFFFF, value))
                return Settings(bool(flags & 0x01), tuple(entries))
            case 6:  # PING
                need(4)
                return Ping(struct.unpack_from(">I", payload)[0])
            case 7:  # GOAWAY
                need(8)
                last, status = struct.unpack_from(">II", payload)
                return GoAway(last & 0x7FFFFFFF, status)
            case 9:  # WINDOW_UPDATE
                need(8)
                stream_id, delta = struct.unpack_from(">II", payload)
                return WindowUpdate(stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        return UnknownControl(frame_type)

    # --- sending ------------------------------------------------------------------------------

    def _compress(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def send_syn_stream(
        self, stream_id: int, headers: Headers, fin: bool = False, priority: int = 0
    ) -> None:
        body = struct.pack(">IIBB", stream_id, 0, (priority & 0x7) << 5, 0)
        flags = FLAG_FIN if fin else 0
        self._out += control_frame(SYN_STREAM, flags, body + self._compress(headers))

    def send_syn_reply(
        self, stream_id: int, headers: Headers | None = None, fin: bool = False
    ) -> None:
        body = struct.pack(">I", stream_id) + self._compress(headers or {})
        self._out += control_frame(SYN_REPLY, FLAG_FIN if fin else 0, body)

    def send_data(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        for start in range(0, len(data), self._max_frame):
            chunk = data[start : start + self._max_frame]
            self._out += data_frame(stream_id, chunk, fin and start + len(chunk) >= len(data))
        if not data:
            self._out += data_frame(stream_id, b"", fin)

    def send_rst_stream(self, stream_id: int, status: int) -> None:
        self._out += control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def send_ping(self, ping_id: int) -> None:
        self._out += control_frame(PING, 0, struct.pack(">I", ping_id))

    def send_goaway(self, last_good_stream_id: int, status: int = 0) -> None:
        self._out += control_frame(GOAWAY, 0, struct.pack(">II", last_good_stream_id, status))

    def send_settings(self, entries: Sequence[tuple[int, int, int]], clear: bool = False) -> None:
        body = struct.pack(">I", len(entries)) + b"".join(
            struct.pack(">II", (f << 24) | i, v) for f, i, v in entries
        )
        self._out += control_frame(SETTINGS, 0x01 if clear else 0, body)

    def send_window_update(self, stream_id: int, delta: int) -> None:
        self._out += control_frame(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out
