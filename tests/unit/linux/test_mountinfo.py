"""Parsing of mountinfo (the pure part of the namespace edge)."""

from __future__ import annotations

from cri_py.linux.namespaces import mount_points

MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:4 net:[4026532179] /run/cri-py/sandboxes/ab/ns/net rw shared:1 - nsfs nsfs rw
36 22 0:40 / /tmp/with\\040space rw - tmpfs tmpfs rw
"""


def test_mount_points_decode_octal_escapes() -> None:
    assert mount_points(MOUNTINFO) == {"/", "/run/cri-py/sandboxes/ab/ns/net", "/tmp/with space"}
