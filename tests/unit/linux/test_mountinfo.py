"""mountinfo as data: mount points, propagation, and the mount a path lives on."""

from __future__ import annotations

import pytest

from cri_py.linux.mountinfo import mount_of, mount_points, parse

MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:4 net:[4026532179] /run/cri-py/sandboxes/ab/ns/net rw shared:1 - nsfs nsfs rw
36 22 0:40 / /tmp/with\\040space rw - tmpfs tmpfs rw
40 22 0:21 /srv/kubelet /var/lib rw shared:7 master:1 - ext4 /dev/vda rw
41 22 0:21 /srv/slave /var/slave rw master:1 - ext4 /dev/vda rw
42 22 0:21 /srv/private /var/private rw - ext4 /dev/vda rw
43 42 0:50 / /var/private rw shared:9 - tmpfs tmpfs rw
"""


def test_mount_points_decode_octal_escapes() -> None:
    assert mount_points(MOUNTINFO) == {
        "/",
        "/run/cri-py/sandboxes/ab/ns/net",
        "/tmp/with space",
        "/var/lib",
        "/var/slave",
        "/var/private",
    }


def test_propagation_is_read_from_the_optional_fields() -> None:
    by_id = {e.mount_id: e for e in parse(MOUNTINFO)}
    assert (by_id[22].shared, by_id[22].slave) == (True, False)
    assert (by_id[36].shared, by_id[36].slave) == (False, False)
    assert (by_id[40].shared, by_id[40].slave) == (True, True)
    assert (by_id[41].shared, by_id[41].slave) == (False, True)
    assert by_id[40].root == "/srv/kubelet"


def test_a_path_lives_on_the_deepest_mount_containing_it() -> None:
    entries = parse(MOUNTINFO)
    assert mount_of(entries, "/var/lib/kubelet/pods/x").mount_id == 40
    assert mount_of(entries, "/var/lib").mount_id == 40
    assert mount_of(entries, "/var/library").mount_id == 22  # a prefix is not a parent
    assert mount_of(entries, "/etc").mount_id == 22


def test_the_top_of_a_stack_of_mounts_wins() -> None:
    assert mount_of(parse(MOUNTINFO), "/var/private/x").mount_id == 43


def test_malformed_lines_are_skipped_and_nothing_contains_a_path_without_root() -> None:
    entries = parse("garbage\n\nx y z - a b c\n" + MOUNTINFO.splitlines()[2])
    assert [e.mount_point for e in entries] == ["/tmp/with space"]
    with pytest.raises(ValueError):
        mount_of(entries, "/etc")


def test_a_mount_point_with_non_ascii_and_escaped_characters_is_found() -> None:
    # The kernel escapes only space, tab, newline and backslash; other bytes (UTF-8 here) are
    # as they are. Decoding them as unicode_escape would have turned "ü" into "Ã¼".
    text = MOUNTINFO + "50 22 0:60 / /var/lib/crï\\040py rw - tmpfs tmpfs rw\n"
    assert mount_of(parse(text), "/var/lib/crï py/containers/x/rootfs").mount_id == 50
