"""Layer tar entries judged without the disk: names, hard-link targets, whiteout names, node
types and directory metadata. The same rules at work on real tars are in `test_unpack.py`."""

from __future__ import annotations

import stat
import tarfile

import pytest

from cri_py.images.layer_entries import (
    MAX_MTIME_NS,
    DirMeta,
    hardlink_target,
    node_type,
    split_entry_name,
    whited_out_name,
)


@pytest.mark.parametrize(
    ("name", "parts"),
    [("./a//b/", ("a", "b")), (".", ()), ("./", ()), ("a/./b", ("a", "b"))],
)
def test_entry_names_are_normalised(name: str, parts: tuple[str, ...]) -> None:
    assert split_entry_name(name) == parts


@pytest.mark.parametrize(
    ("name", "reason"),
    [("/etc/passwd", "absolute path"), ("a/../../b", "escapes"), ("a\x00b", "NUL")],
)
def test_entry_names_outside_the_layer_are_refused(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        split_entry_name(name)


SEEN = {
    ("bin", "busybox"): "file",
    ("etc",): "dir",
    ("gone",): "whiteout",
    ("dev", "null"): "skipped",
}


def test_a_hard_link_to_an_earlier_file_names_it_and_its_kind() -> None:
    assert hardlink_target("./bin//busybox", SEEN) == (("bin", "busybox"), "file")
    assert hardlink_target("dev/null", SEEN) == (("dev", "null"), "skipped")


@pytest.mark.parametrize(
    ("linkname", "reason"),
    [
        ("bin/later", "is not an earlier entry of this layer"),
        (".", "is not an earlier entry of this layer"),
        ("etc", "hard link to a dir 'etc'"),
        ("gone", "hard link to a whiteout 'gone'"),
        ("../outside", "escapes the layer directory"),
        ("/bin/busybox", "absolute path"),
    ],
)
def test_hard_links_to_anything_else_are_refused(linkname: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        hardlink_target(linkname, SEEN)


def test_whiteout_names() -> None:
    assert whited_out_name(".wh.passwd") == "passwd"
    for base, name in ((".wh.", "''"), (".wh..", "'.'"), (".wh...", "'..'")):
        with pytest.raises(ValueError, match=f"whiteout of {name} escapes its directory"):
            whited_out_name(base)


def test_node_types_and_directory_metadata() -> None:
    fifo = tarfile.TarInfo("p")
    fifo.type = tarfile.FIFOTYPE
    char = tarfile.TarInfo("c")
    char.type = tarfile.CHRTYPE
    block = tarfile.TarInfo("b")
    block.type = tarfile.BLKTYPE
    assert [node_type(m) for m in (fifo, char, block)] == [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK]

    directory = tarfile.TarInfo("d")
    directory.type = tarfile.DIRTYPE
    directory.mode, directory.uid, directory.gid = 0o41755, 7, 8
    directory.mtime = 1e30  # a hostile tar can say anything: clamped for utimensat
    directory.pax_headers = {"SCHILY.xattr.user.k": "v\udcff", "comment": "not an xattr"}
    meta = DirMeta.of(directory, opaque=True)
    assert meta == DirMeta(0o1755, 7, 8, MAX_MTIME_NS, {"user.k": b"v\xff"}, opaque=True)
