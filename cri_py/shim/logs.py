"""CRI log lines, sans-IO: bytes a container wrote in, `<RFC3339Nano> <stream> <P|F> <text>\n`
lines out (kubelet's format, read by `kubectl logs` and `crictl logs`). A line longer than
16 KiB is cut into partial (`P`) lines ending with one full (`F`) line, as containerd does, so
readers never buffer unbounded lines. Stdlib only (the shim imports it)."""

from __future__ import annotations

import time

MAX_LINE_BYTES = 16 * 1024


def format_timestamp(ns: int) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped (and the dot with
    them), e.g. `2026-11-29T02:04:11.5Z`."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


class LogLines:
    """One stream's line splitter: `feed` what was read, `close` at EOF."""

    def __init__(self, stream: str, max_line: int = MAX_LINE_BYTES) -> None:
        self.stream = stream
        self._prefix = f" {stream} ".encode()
        self._max = max_line
        self._pending = bytearray()

    def _line(self, ns: int, tag: bytes, text: bytes) -> bytes:
        return format_timestamp(ns).encode() + self._prefix + tag + b" " + text + b"\n"

    def feed(self, data: bytes, ns: int) -> bytes:
        """The complete lines `data` finishes (stamped `ns`); the rest waits for more."""
        self._pending += data
        out = bytearray()
        while True:
            newline = self._pending.find(b"\n", 0, self._max + 1)
            if newline >= 0:
                text = bytes(self._pending[:newline])
                del self._pending[: newline + 1]
                if text.endswith(b"\r"):
                    text = text[:-1]  # CRLF from a terminal: one line, as containerd reads it
                out += self._line(ns, b"F", text)
            elif len(self._pending) > self._max:
                out += self._line(ns, b"P", bytes(self._pending[: self._max]))
                del self._pending[: self._max]
            else:
                return bytes(out)

    def close(self, ns: int) -> bytes:
        """At EOF: an unterminated last line is written as a partial (`P`) line, as containerd
        does: kubelet then reads it without a newline (`echo -n DONE` as a termination message
        from the log is "DONE", not "DONE\n")."""
        if not self._pending:
            return b""
        text = bytes(self._pending)
        self._pending.clear()
        return self._line(ns, b"P", text)
