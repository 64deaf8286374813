#!/usr/bin/python3
"""The lab's upstream DNS server: every name is unknown, answered at once.

The lab is offline. Docker's embedded DNS in each kind node forwards a name it does not know
(not a container of its networks) to the daemon's "dns" server, and when that server does not
answer it drops the query: every unknown name then costs the client its whole resolver timeout
(10-20 s with glibc's defaults), which kubelet, CoreDNS's forwards and the DNS conformance specs
all pay. This server, on the kind network's gateway, answers every query with NXDOMAIN, which is
the truth for a lab with no Internet. Standard library only: e2e/docker.sh runs it with the
system python3 as a copy outside the checkout.

    dns_stub.py ADDRESS [PORT]      serve UDP and TCP until SIGTERM
"""

from __future__ import annotations

import signal
import socketserver
import struct
import sys
import threading

_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_OPCODE_MASK = 0x7800
_RD = 0x0100
_RA = 0x0080
_NXDOMAIN = 3
_FORMERR = 1
_NOTIMP = 4


def answer(query: bytes) -> bytes | None:
    """The reply to one DNS message: NXDOMAIN with the question echoed; None to ignore it."""
    if len(query) < _HEADER.size:
        return None
    ident, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(query)
    if flags & _QR:
        return None  # a response, not a query: never answer those (no reflection loops)
    opcode = flags & _OPCODE_MASK
    question = _question(query, qdcount) if opcode == 0 and qdcount == 1 else None
    if opcode != 0:
        rcode, question = _NOTIMP, b""
    elif question is None:
        rcode, question = _FORMERR, b""
    else:
        rcode = _NXDOMAIN
    reply_flags = _QR | opcode | (flags & _RD) | _RA | rcode
    return _HEADER.pack(ident, reply_flags, 1 if question else 0, 0, 0, 0) + question


def _question(message: bytes, qdcount: int) -> bytes | None:
    """The bytes of the one question after the header, or None when it is malformed."""
    offset = _HEADER.size
    while True:
        if offset >= len(message):
            return None
        length = message[offset]
        if length & 0xC0:
            return None  # compression pointers have no place in a question of a query
        offset += 1 + length
        if length == 0:
            break
    end = offset + 4  # QTYPE, QCLASS
    if end > len(message):
        return None
    return message[_HEADER.size : end]


class _UDPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        reply = answer(data)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TCPHandler(socketserver.StreamRequestHandler):
    timeout = 10

    def handle(self) -> None:
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            (length,) = struct.unpack("!H", head)
            data = self.rfile.read(length)
            if len(data) < length:
                return
            reply = answer(data)
            if reply is None:
                return
            self.wfile.write(struct.pack("!H", len(reply)) + reply)


class _UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    address = (argv[1], int(argv[2]) if len(argv) == 3 else 53)
    udp = _UDPServer(address, _UDPHandler)
    tcp = _TCPServer(address, _TCPHandler)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    for server in (udp, tcp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"dns_stub: NXDOMAIN for every name on {address[0]}:{address[1]} (udp, tcp)", flush=True)
    done.wait()
    for server in (udp, tcp):
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
