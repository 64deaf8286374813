"""Layer unpacking: content, metadata, whiteouts and opaque dirs as overlay wants them, every
compression; and a corpus of hostile layers, each rejected with a clear error, nothing written
outside the layer dir and no layer dir left behind."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from cri_py.errors import FailedPrecondition
from cri_py.images.unpack import LayerLimits, sniff_compression, unpack_layer
from cri_py.store.trash import remove_tree

from .fakes import (
    MTIME,
    Entry,
    Layer,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    make_layer,
    make_tar,
    sha256,
    symlink,
)

IS_ROOT = os.geteuid() == 0
DEFAULT_LIMITS = LayerLimits()
MODES = [False, True] if IS_ROOT else [False]


@pytest.fixture(params=MODES, ids=lambda p: "privileged" if p else "unprivileged")
def privileged(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def layers_dir(tmp_path: Path) -> Path:
    path = tmp_path / "layers"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the layers that hostile layers aim at."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_text("keep me")
    return path


def unpack(
    layer: Layer,
    layers_dir: Path,
    privileged: bool,
    diff_id: str = "",
    limits: LayerLimits = DEFAULT_LIMITS,
) -> Path:
    blob = layers_dir.parent / f"blob-{layer.digest[7:19]}"
    blob.write_bytes(layer.blob)
    target = layers_dir / "layer"
    unpack_layer(blob, target, diff_id or layer.diff_id, privileged=privileged, limits=limits)
    return target


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_unpack_reproduces_files_dirs_links_and_metadata(
    compression: str, layers_dir: Path, privileged: bool
) -> None:
    layer = make_layer(
        [
            directory("./", mode=0o755),
            directory("bin", mode=0o711),
            file("bin/busybox", b"\x7fELF", mode=0o4755),
            hardlink("bin/sh", "bin/busybox"),
            symlink("bin/ls", "/bin/busybox"),
            symlink("etc-link", "../../../../etc"),  # stored, never followed
            file("etc/passwd", b"root:x:0:0\n", mode=0o600),  # parent implied
            file("data/empty", b""),
            fifo("run/fifo"),
            file("x", b"y", xattrs={"user.note": "hi"}),
        ],
        compression,
    )
    assert sniff_compression(layer.blob[:4]) == compression
    root = unpack(layer, layers_dir, privileged)
    assert (root / "bin/busybox").read_bytes() == b"\x7fELF"
    assert stat.S_IMODE((root / "bin/busybox").stat().st_mode) == 0o4755
    assert (root / "bin/sh").stat().st_ino == (root / "bin/busybox").stat().st_ino
    assert os.readlink(root / "bin/ls") == "/bin/busybox"
    assert os.readlink(root / "etc-link") == "../../../../etc"
    assert stat.S_IMODE((root / "bin").stat().st_mode) == 0o711
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o755  # implied parent
    assert stat.S_IMODE((root / "etc/passwd").stat().st_mode) == 0o600
    assert stat.S_ISFIFO((root / "run/fifo").stat().st_mode)
    assert (root / "bin/busybox").stat().st_mtime == MTIME
    assert (root / "bin").stat().st_mtime == MTIME  # dirs stamped after their children
    assert os.lstat(root / "bin/ls").st_mtime == MTIME
    assert os.getxattr(root / "x", "user.note") == b"hi"
    assert sorted(p.name for p in layers_dir.iterdir()) == ["layer"]  # no temp dir left


def test_unpack_reports_bytes_and_inodes(layers_dir: Path) -> None:
    layer = make_layer([file("a", b"12345"), hardlink("b", "a"), directory("d"), symlink("s", "a")])
    blob = layers_dir.parent / "blob"
    blob.write_bytes(layer.blob)
    result = unpack_layer(blob, layers_dir / "l", layer.diff_id, privileged=False)
    assert (result.unpacked_bytes, result.inodes) == (5, 4)  # root, a, d, s


@pytest.mark.skipif(not IS_ROOT, reason="needs root: ownership and device nodes")
def test_unpack_as_root_keeps_owners_devices_and_capabilities(layers_dir: Path) -> None:
    caps = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    layer = make_layer(
        [
            directory("home/app", uid=1000, gid=1000, mode=0o700),
            file("home/app/f", b"x", uid=1000, gid=1001),
            symlink("home/app/l", "f", uid=1002, gid=1002),
            chardev("dev/null", 1, 3),
            file("bin/ping", b"p", mode=0o755, xattrs={"security.capability": caps}),
        ]
    )
    root = unpack(layer, layers_dir, privileged=True)
    info = (root / "home/app/f").stat()
    assert (info.st_uid, info.st_gid) == (1000, 1001)
    assert (os.lstat(root / "home/app/l").st_uid, os.lstat(root / "home/app").st_uid) == (
        1002,
        1000,
    )
    dev = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(dev.st_mode) and os.major(dev.st_rdev) == 1 and os.minor(dev.st_rdev) == 3
    assert os.getxattr(root / "bin/ping", "security.capability")[:4] == b"\x01\x00\x00\x02"


def test_unpack_without_privilege_skips_devices_and_ownership(layers_dir: Path) -> None:
    layer = make_layer([chardev("dev/null", 1, 3), file("f", b"x", uid=1234)])
    blob = layers_dir.parent / "blob"
    blob.write_bytes(layer.blob)
    result = unpack_layer(blob, layers_dir / "l", layer.diff_id, privileged=False)
    assert "device nodes" in result.skipped
    assert not (layers_dir / "l/dev/null").exists()
    assert (layers_dir / "l/f").read_bytes() == b"x"


def test_whiteouts_become_overlay_whiteouts_and_opaque_dirs_get_the_xattr(
    layers_dir: Path, privileged: bool
) -> None:
    layer = make_layer(
        [
            directory("etc"),
            file("etc/.wh.removed"),
            file("var/cache/.wh..wh..opq"),  # parent implied, made opaque
            file("var/cache/new", b"n"),
            file(".wh..wh.plnk"),  # aufs bookkeeping: ignored
        ]
    )
    root = unpack(layer, layers_dir, privileged)
    whiteout = os.lstat(root / "etc/removed")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert not (root / "etc/.wh.removed").exists()
    name = "trusted.overlay.opaque" if privileged else "user.overlay.opaque"
    assert os.getxattr(root / "var/cache", name) == b"y"
    assert not (root / "var/cache/.wh..wh..opq").exists()
    assert (root / "var/cache/new").read_bytes() == b"n"
    assert not (root / ".wh..wh.plnk").exists() and not (root / "plnk").exists()


def test_unprivileged_read_only_dirs_still_get_their_children_and_can_be_removed(
    layers_dir: Path,
) -> None:
    layer = make_layer(
        [directory("ro", mode=0o555), file("ro/f", b"x"), directory("ro/sub", mode=0)]
    )
    root = unpack(layer, layers_dir, privileged=False)
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((root / "ro/sub").stat().st_mode) == 0
    remove_tree(root)
    assert not root.exists()


def test_second_unpack_of_the_same_layer_keeps_the_first(layers_dir: Path) -> None:
    layer = make_layer([file("a", b"abc")])
    blob = layers_dir.parent / "blob"
    blob.write_bytes(layer.blob)
    first = unpack_layer(blob, layers_dir / "l", layer.diff_id, privileged=False)
    inode = (layers_dir / "l/a").stat().st_ino
    second = unpack_layer(blob, layers_dir / "l", layer.diff_id, privileged=False)
    assert (second.unpacked_bytes, second.inodes) == (first.unpacked_bytes, first.inodes)
    assert (layers_dir / "l/a").stat().st_ino == inode
    assert sorted(p.name for p in layers_dir.iterdir()) == ["l"]


# --- the hostile corpus -------------------------------------------------------------------------


def _hostile(outside: Path) -> dict[str, tuple[list[Entry], str]]:
    out = str(outside)
    return {
        "path traversal": ([file("../outside/evil", b"x")], "escapes the layer directory"),
        "deep traversal": ([file("a/b/../../../outside/evil", b"x")], "escapes"),
        "absolute path": ([file(f"{out}/evil", b"x")], "absolute path"),
        "absolute dir": ([directory("/tmp/evil-dir")], "absolute path"),
        "symlinked parent, relative": (
            [symlink("link", "../outside"), file("link/evil", b"x")],
            "parent link is a symlink",
        ),
        "symlinked parent, absolute": (
            [symlink("link", out), file("link/evil", b"x")],
            "parent link is a symlink",
        ),
        "symlinked parent, deep": (
            [directory("a"), symlink("a/b", out), file("a/b/c/evil", b"x")],
            "parent a/b is a symlink",
        ),
        "symlink replaced by dir": (
            [symlink("link", out), directory("link")],
            "duplicate entry",
        ),
        "hard link traversal": ([hardlink("h", "../outside/secret")], "escapes"),
        "hard link absolute": ([hardlink("h", f"{out}/secret")], "absolute path"),
        "hard link through symlink": (
            [symlink("s", out), hardlink("h", "s/secret")],
            "not an earlier entry of this layer",
        ),
        "hard link to a later entry": (
            [hardlink("h", "later"), file("later")],
            "not an earlier entry",
        ),
        "hard link to a dir": ([directory("d"), hardlink("h", "d")], "hard link to a dir"),
        "hard link to the root": ([hardlink("h", ".")], "not an earlier entry"),
        "whiteout traversal": ([file("../outside/.wh.secret")], "escapes"),
        "whiteout of dot-dot": ([file("sub/.wh...")], "whiteout of '..'"),
        "whiteout of dot": ([file(".wh..")], "whiteout of '.'"),
        "whiteout through symlink": (
            [symlink("s", out), file("s/.wh.secret")],
            "parent s is a symlink",
        ),
        "opaque through symlink": (
            [symlink("s", out), file("s/.wh..wh..opq")],
            "parent s is a symlink",
        ),
        "duplicate file": ([file("f", b"1"), file("f", b"2")], "duplicate entry"),
        "duplicate dir": ([directory("d"), directory("d")], "duplicate entry"),
        "file over implied dir": ([file("d/f"), file("d")], "duplicate entry"),
        "whiteout and file": ([file(".wh.f"), file("f")], "duplicate entry"),
        "file and whiteout": ([file("f"), file(".wh.f")], "duplicate entry"),
        "whiteout of implied dir": ([file("d/f"), file(".wh.d")], "whiteout of a directory"),
        "duplicate opaque": ([file("d/.wh..wh..opq"), file("d/.wh..wh..opq")], "duplicate"),
        "forged overlay xattr": (
            [directory("d", xattrs={"trusted.overlay.redirect": "/etc"})],
            "overlay's own xattr",
        ),
        "forged user overlay xattr": (
            [file("f", xattrs={"user.overlay.opaque": "y"})],
            "overlay's own xattr",
        ),
        "root is not a dir": ([file("./")], "layer root"),
    }


HOSTILE = sorted(_hostile(Path("/x")))


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_layer_is_rejected_and_leaves_nothing(
    case: str, layers_dir: Path, outside: Path, privileged: bool
) -> None:
    entries, reason = _hostile(outside)[case]
    layer = make_layer(entries)
    before = sorted(os.listdir(layers_dir.parent))
    with pytest.raises(FailedPrecondition, match=reason) as caught:
        unpack(layer, layers_dir, privileged)
    assert "rejected" in str(caught.value) or "escapes" in str(caught.value)
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "keep me"
    assert list(layers_dir.iterdir()) == []  # neither the layer nor its temp dir
    after = sorted(os.listdir(layers_dir.parent))
    assert set(after) - set(before) <= {p for p in after if p.startswith("blob-")}
    assert not Path("/tmp/evil-dir").exists()


def test_layer_whose_content_does_not_match_its_diff_id_is_rejected(layers_dir: Path) -> None:
    layer = make_layer([file("a", b"x")])
    with pytest.raises(FailedPrecondition, match=r"hashes to sha256:\w+, the image config says"):
        unpack(layer, layers_dir, False, diff_id=sha256(b"something else"))
    assert list(layers_dir.iterdir()) == []


def test_truncated_compressed_stream_is_rejected(layers_dir: Path) -> None:
    layer = make_layer([file("a", os.urandom(50_000))])
    broken = Layer(layer.blob[: len(layer.blob) // 2], layer.diff_id, layer.media_type)
    with pytest.raises(FailedPrecondition, match="broken compressed stream"):
        unpack(broken, layers_dir, False)
    assert list(layers_dir.iterdir()) == []


def test_garbage_is_not_a_tar(layers_dir: Path) -> None:
    garbage = gzip.compress(b"\x01not a tar\x02" * 200)
    with pytest.raises(FailedPrecondition, match="not a valid tar"):
        unpack(Layer(garbage, sha256(b""), "x"), layers_dir, False)
    assert list(layers_dir.iterdir()) == []


def test_name_too_long_is_a_clear_rejection(layers_dir: Path) -> None:
    tar = make_tar([file("a" * 300, b"x")])
    with pytest.raises(FailedPrecondition, match="cannot create it"):
        unpack(Layer(tar, sha256(tar), "x"), layers_dir, False)


def test_a_compression_bomb_over_the_byte_limit_fails_and_leaves_nothing(layers_dir: Path) -> None:
    # 8 MiB of zeros compress to a few KiB; the limit is 1 MiB.
    layer = make_layer([file("zeros", bytes(8 << 20))], compression="zstd")
    assert len(layer.blob) < 64 << 10
    with pytest.raises(FailedPrecondition, match=r"too large: more than 1048576 bytes") as caught:
        unpack(layer, layers_dir, False, limits=LayerLimits(max_bytes=1 << 20))
    assert "images.max_layer_bytes" in str(caught.value)
    assert list(layers_dir.iterdir()) == []  # neither the layer nor its temp dir


def test_a_sparse_file_over_the_byte_limit_is_refused_before_it_is_written(
    layers_dir: Path,
) -> None:
    # A 10 KiB tar whose one (PAX sparse) entry expands to 50 MB of holes filled with zeros.
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sparse")
        info.size = 10
        info.pax_headers = {
            "GNU.sparse.map": "0,10",
            "GNU.sparse.size": "50000000",
            "GNU.sparse.numblocks": "1",
            "GNU.sparse.name": "sparse",
        }
        tar.addfile(info, io.BytesIO(b"x" * 10))
    data = out.getvalue()
    with pytest.raises(FailedPrecondition, match="more than 1048576 bytes of files"):
        unpack(Layer(data, sha256(data), "x"), layers_dir, False,
               limits=LayerLimits(max_bytes=1 << 20))  # fmt: skip
    assert list(layers_dir.iterdir()) == []


def test_trailing_data_after_the_tar_counts_against_the_limit(layers_dir: Path) -> None:
    tar = make_tar([file("a", b"x")]) + bytes(4 << 20)
    with pytest.raises(FailedPrecondition, match="too large"):
        unpack(Layer(gzip.compress(tar), sha256(tar), "x"), layers_dir, False,
               limits=LayerLimits(max_bytes=1 << 20))  # fmt: skip
    assert list(layers_dir.iterdir()) == []


@pytest.mark.parametrize("kind", ["files", "hard links", "implied directories"])
def test_more_entries_than_the_inode_limit_fail_and_leave_nothing(
    kind: str, layers_dir: Path
) -> None:
    if kind == "files":
        entries = [file(f"f{i}") for i in range(50)]
    elif kind == "hard links":
        entries = [file("f"), *(hardlink(f"l{i}", "f") for i in range(50))]
    else:
        entries = [file("/".join(f"d{j}" for j in range(i + 1)) + "/f") for i in range(30)]
    with pytest.raises(FailedPrecondition, match=r"too large: more than 20 files"):
        unpack(make_layer(entries), layers_dir, False, limits=LayerLimits(max_inodes=20))
    assert list(layers_dir.iterdir()) == []


def test_a_layer_just_within_the_limits_unpacks(layers_dir: Path) -> None:
    entries = [file(f"f{i}", b"y" * 10) for i in range(9)]  # 9 files + the root: 10 inodes
    tar = make_tar(entries)
    target = unpack(
        make_layer(entries), layers_dir, False, limits=LayerLimits(len(tar), max_inodes=10)
    )
    assert sorted(os.listdir(target)) == [f"f{i}" for i in range(9)]
