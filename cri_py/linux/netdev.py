"""A network interface's flags through ioctl(2) on a datagram socket, in the calling thread's
network namespace (netdevice(7)): enough to set a link up without a netlink session."""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sh")  # ifr_name, ifr_flags (the rest of struct ifreq unused here)
_IFREQ_SIZE = 40


def _ifreq(name: str, flags: int = 0) -> bytes:
    encoded = name.encode()
    if not encoded or len(encoded) > 15:
        raise ValueError(f"bad interface name {name!r}")
    return _IFREQ.pack(encoded, flags).ljust(_IFREQ_SIZE, b"\0")


def link_flags(name: str) -> int:
    """The IFF_* flags of interface `name` (OSError ENODEV when there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        reply = fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(name))
    return int(_IFREQ.unpack_from(reply)[1]) & 0xFFFF


def set_link_up(name: str) -> None:
    """Sets interface `name` up (already up: nothing changes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        reply = fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(name))
        flags = _IFREQ.unpack_from(reply)[1] & 0xFFFF
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(name, _as_short(flags | IFF_UP)))


def _as_short(flags: int) -> int:
    """ifr_flags is a C short: flags above 0x7fff go in as negative numbers."""
    return flags - 0x10000 if flags & 0x8000 else flags
