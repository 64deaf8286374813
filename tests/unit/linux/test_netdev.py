"""Interface flags by ioctl (cri_py.linux.netdev): the request layout and its refusals; reading
this namespace's `lo` changes nothing."""

from __future__ import annotations

import errno

import pytest

from cri_py.linux import netdev


def test_an_ifreq_carries_the_name_and_the_flags_as_a_c_short() -> None:
    request = netdev._ifreq("lo", netdev._as_short(0x8000 | netdev.IFF_UP))
    assert len(request) == 40
    assert request[:16] == b"lo" + b"\0" * 14
    assert request[16:18] == (0x8001).to_bytes(2, "little")


@pytest.mark.parametrize("name", ["", "a" * 16])
def test_names_the_kernel_would_truncate_or_reject_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="bad interface name"):
        netdev._ifreq(name)


def test_flags_of_loopback_and_of_a_missing_link() -> None:
    assert netdev.link_flags("lo") & netdev.IFF_UP
    with pytest.raises(OSError) as failure:
        netdev.link_flags("cri-py-nosuch")
    assert failure.value.errno == errno.ENODEV
