"""Pseudo-terminals in a container's own devpts: the master opened through the container's root
(/proc/<pid>/root/dev/pts/ptmx), the slave got with TIOCGPTPEER (no path lookup), so the
command sees /dev/pts/<n> of its own /dev (`tty`, `ps` and ttyname() work in the container).
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios

# <asm-generic/ioctls.h>: _IO('T', 0x41), Linux 4.13+.
TIOCGPTPEER = 0x5441
TIOCSPTLCK = getattr(termios, "TIOCSPTLCK", 0x40045431)


def open_pty(ptmx: str) -> tuple[int, int]:
    """(master, slave) of a new terminal of the devpts instance whose ptmx is `ptmx`."""
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        os.close(master)
        raise
    return master, int(slave)
