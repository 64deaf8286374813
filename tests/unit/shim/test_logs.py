"""CRI log formatting and splitting, sans-IO."""

from __future__ import annotations

from cri_py.shim.logs import MAX_LINE_BYTES, LogLines, format_timestamp

T = 1_795_919_051_123_456_789  # 2026-11-29T02:24:11.123456789Z


def test_timestamp_is_go_rfc3339nano_in_utc() -> None:
    assert format_timestamp(T) == "2026-11-29T02:24:11.123456789Z"
    assert format_timestamp(T - 456_789) == "2026-11-29T02:24:11.123Z"
    assert format_timestamp(T - 123_456_789) == "2026-11-29T02:24:11Z"


def test_full_lines_are_tagged_f_and_the_rest_waits() -> None:
    lines = LogLines("stdout")
    assert lines.feed(b"hello\nwor", T) == b"2026-11-29T02:24:11.123456789Z stdout F hello\n"
    assert lines.feed(b"ld\n", T).endswith(b" stdout F world\n")
    assert lines.feed(b"", T) == b""


def test_unterminated_last_line_is_written_partial_at_eof() -> None:
    # kubelet joins P lines without a newline: `echo -n oops` must read back as "oops".
    lines = LogLines("stderr")
    assert lines.feed(b"oops", T) == b""
    assert lines.close(T).endswith(b" stderr P oops\n")
    assert lines.close(T) == b""


def test_empty_lines_and_crlf() -> None:
    out = LogLines("stdout").feed(b"\na\r\n", T).split(b"\n")
    assert out[0].endswith(b"stdout F ") and out[1].endswith(b"stdout F a")


def test_long_line_is_split_into_partials_with_nothing_lost() -> None:
    text = bytes(range(97, 123)) * 2000  # 52000 bytes, no newline
    lines = LogLines("stdout")
    out = lines.feed(text[:30000], T) + lines.feed(text[30000:] + b"\n", T)
    records = out.splitlines()
    assert [r.split(b" ")[2] for r in records] == [b"P", b"P", b"P", b"F"]
    assert all(len(r.split(b" ", 3)[3]) <= MAX_LINE_BYTES for r in records)
    assert b"".join(r.split(b" ", 3)[3] for r in records) == text


def test_line_of_exactly_the_limit_is_one_full_line() -> None:
    out = LogLines("stdout").feed(b"x" * MAX_LINE_BYTES + b"\n", T)
    assert out.count(b"\n") == 1 and b" F " in out
