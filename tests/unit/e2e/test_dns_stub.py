"""The lab's upstream DNS server (e2e/kind/dns_stub.py): every query gets NXDOMAIN at once, with
its ID and question echoed, over UDP and TCP; responses and malformed messages get no NXDOMAIN."""

from __future__ import annotations

import importlib.util
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

STUB = Path(__file__).resolve().parents[3] / "e2e" / "kind" / "dns_stub.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dns_stub", STUB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stub = load()


def query(name: str, ident: int = 0x1234, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def test_every_name_is_nxdomain_with_the_question_echoed() -> None:
    q = query("nosuch.example.org", ident=0xBEEF, qtype=28)
    reply = stub.answer(q)
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    assert ident == 0xBEEF
    assert flags & 0x8000  # a response
    assert flags & 0x0100  # recursion desired, copied
    assert flags & 0x000F == 3  # NXDOMAIN
    assert (qd, an, ns, ar) == (1, 0, 0, 0)
    assert reply[12:] == q[12:]


def test_responses_are_never_answered() -> None:
    q = bytearray(query("example.org"))
    q[2] |= 0x80
    assert stub.answer(bytes(q)) is None
    assert stub.answer(b"\x00\x01") is None


def test_malformed_question_is_formerr_not_nxdomain() -> None:
    truncated = query("example.org")[:-3]
    reply = stub.answer(truncated)
    assert struct.unpack_from("!H", reply, 2)[0] & 0x000F == 1
    pointer = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    assert struct.unpack_from("!H", stub.answer(pointer), 2)[0] & 0x000F == 1


def test_serves_udp_and_tcp_until_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(STUB), "127.0.0.1", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert "NXDOMAIN" in proc.stdout.readline()
        q = query("kind-worker.invalid")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(q, ("127.0.0.1", port))
            reply, _ = udp.recvfrom(512)
        assert struct.unpack_from("!H", reply, 2)[0] & 0x000F == 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
            tcp.sendall(struct.pack("!H", len(q)) + q)
            length = struct.unpack("!H", tcp.recv(2))[0]
            reply = b""
            while len(reply) < length:
                reply += tcp.recv(length - len(reply))
        assert reply[12:] == q[12:]
        proc.terminate()
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
