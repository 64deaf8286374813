"""The container's /dev, filled by descriptor in a fake rootfs: nothing lands where an image's
link points. mknod needs root (those tests are skipped without it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cri_py.linux import rootfs
from cri_py.oci.plan import DeviceStep
from cri_py.shim import mounts

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def _root_fd(root: Path) -> int:
    return os.open(root, os.O_PATH | os.O_DIRECTORY)


def test_a_symlinked_dev_is_refused_and_its_target_stays_empty(tmp_path: Path) -> None:
    aim = tmp_path / "aim"
    aim.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "dev").symlink_to(aim)
    fd = _root_fd(root)
    try:
        with pytest.raises(rootfs.UnsafeRootfs, match="/dev is a symlink"):
            mounts.populate_dev(fd)
    finally:
        os.close(fd)
    assert list(aim.iterdir()) == []


def test_no_dev_in_the_image_is_left_alone(tmp_path: Path) -> None:
    fd = _root_fd(tmp_path)
    try:
        mounts.populate_dev(fd)
    finally:
        os.close(fd)
    assert list(tmp_path.iterdir()) == []


@needs_root
def test_dev_gets_the_default_nodes_and_links_keeping_what_is_there(tmp_path: Path) -> None:
    aim = tmp_path / "aim"
    aim.mkdir()
    dev = tmp_path / "root" / "dev"
    dev.mkdir(parents=True)
    (dev / "null").symlink_to(aim / "null")  # kept as it is, never followed
    fd = _root_fd(tmp_path / "root")
    try:
        mounts.populate_dev(fd)
    finally:
        os.close(fd)
    assert list(aim.iterdir()) == []
    zero = os.lstat(dev / "zero")
    assert stat.S_ISCHR(zero.st_mode) and zero.st_rdev == os.makedev(1, 5)
    assert stat.S_IMODE(zero.st_mode) == 0o666
    assert os.readlink(dev / "ptmx") == "pts/ptmx"
    assert os.readlink(dev / "null") == str(aim / "null")


@needs_root
def test_a_device_through_an_image_link_is_made_inside_the_root(tmp_path: Path) -> None:
    aim = tmp_path / "aim"
    aim.mkdir()
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "opt").symlink_to(aim)  # absolute: inside the root it is <root><aim>
    (root / "dev" / "ptmx").symlink_to(aim / "ptmx")
    devices = [
        DeviceStep("/opt/devs/mine", "c", 1, 3, 0o620, 1000, 1001),
        DeviceStep("/dev/ptmx", "c", 5, 2, 0o666),  # replaces the link, not its target
    ]
    fd = _root_fd(root)
    try:
        mounts.create_devices(fd, devices)
    finally:
        os.close(fd)
    assert list(aim.iterdir()) == []
    made = os.lstat(root / aim.relative_to("/") / "devs" / "mine")
    assert stat.S_ISCHR(made.st_mode) and made.st_rdev == os.makedev(1, 3)
    assert (stat.S_IMODE(made.st_mode), made.st_uid, made.st_gid) == (0o620, 1000, 1001)
    assert stat.S_ISCHR(os.lstat(root / "dev" / "ptmx").st_mode)


def test_the_mount_point_of_a_path_is_read_from_this_process_mountinfo() -> None:
    assert mounts._mount_point_of("/proc/self/fd") == "/proc"
    assert mounts._mount_point_of("/") == "/"
