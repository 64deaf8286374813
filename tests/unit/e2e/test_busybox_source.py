"""busybox from Debian's source package: the .dsc's checksums, the config change, and the
layer that carries the build."""

import hashlib
from pathlib import Path

import pytest
from imagelab.busybox_source import BusyboxBuilder, dsc_files, enable_options
from imagelab.catalog import BusyboxSource, LayerRecipe
from imagelab.environment import BuildError
from imagelab.layers import build_layer

DSC = """-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA512

Format: 3.0 (quilt)
Source: busybox
Version: 1:1.35.0-4+deb12u1
Checksums-Sha1:
 36a1766206c8148bc06aca4e1f134016d40912d0 2480624 busybox_1.35.0.orig.tar.bz2
Checksums-Sha256:
 faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694 2480624 busybox.orig.tar.bz2
 1cacbe095ef4880ea7879933c8e3c5075d1527cd6fbcb626a9b41e5daefd1a46 68028 busybox.debian.tar.xz
Files:
 585949b1dd4292b604b7d199866e9913 2480624 busybox_1.35.0.orig.tar.bz2

-----BEGIN PGP SIGNATURE-----
"""


def test_dsc_files_are_the_sha256_checksums_only() -> None:
    assert dsc_files(DSC) == {
        "busybox.orig.tar.bz2": "faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694",
        "busybox.debian.tar.xz": "1cacbe095ef4880ea7879933c8e3c5075d1527cd6fbcb626a9b41e5daefd1a46",
    }


def test_a_dsc_without_sha256_checksums_is_refused() -> None:
    with pytest.raises(BuildError, match="Checksums-Sha256"):
        dsc_files("Format: 3.0 (quilt)\nFiles:\n 585949 1 x.tar.bz2\n")


def test_enable_turns_an_unset_option_on_and_leaves_the_rest() -> None:
    config = "CONFIG_LS=y\n# CONFIG_NMETER is not set\n# CONFIG_NMETER_X is not set\n"

    assert enable_options(config, ("CONFIG_NMETER",)) == (
        "CONFIG_LS=y\nCONFIG_NMETER=y\n# CONFIG_NMETER_X is not set\n"
    )


def test_enable_of_an_option_the_config_lacks_is_a_build_error() -> None:
    with pytest.raises(BuildError, match="CONFIG_NOPE"):
        enable_options("CONFIG_LS=y\n", ("CONFIG_NOPE",))


def test_the_source_build_goes_where_the_layer_says_with_its_applets_linked(
    tmp_path: Path,
) -> None:
    # A stand-in for the built binary: what matters is what `busybox --list` prints.
    built = tmp_path / "busybox"
    built.write_bytes(b"#!/bin/sh\nprintf 'busybox\\nnmeter\\nsh\\n'\n")
    built.chmod(0o755)
    layer = LayerRecipe(
        name="busybox-nmeter",
        comment="",
        packages=(),
        copies=(),
        files=None,
        busybox_applets="/bin/busybox",
        paths=(),
        appends=(),
        busybox_source="/bin/busybox",
    )

    tree = build_layer(layer, {}, {}, "x86_64-linux-gnu", busybox=lambda: built)

    assert tree.entries["/bin/busybox"].content() == built.read_bytes()
    assert tree.entries["/bin/busybox"].mode == 0o755
    links = {path: e.target for path, e in tree.entries.items() if e.kind == "hardlink"}
    assert links == {"/bin/nmeter": "/bin/busybox", "/bin/sh": "/bin/busybox"}


def source_spec(dsc: Path, sha256: str) -> BusyboxSource:
    return BusyboxSource(
        comment="",
        dsc=dsc.as_uri(),
        dsc_sha256=sha256,
        flavour="deb",
        enable=("CONFIG_NMETER",),
        require_applets=("nmeter",),
    )


def mirror(tmp_path: Path, tarball: bytes) -> Path:
    """A pool directory with a .dsc listing one tarball, as deb.debian.org serves them."""
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "bb.orig.tar.bz2").write_bytes(b"the real tarball")
    digest = hashlib.sha256(tarball).hexdigest()
    dsc = pool / "bb_1.0-1.dsc"
    dsc.write_text(f"Source: bb\nChecksums-Sha256:\n {digest} {len(tarball)} bb.orig.tar.bz2\n")
    return dsc


def test_sources_are_fetched_once_checked_against_the_pinned_dsc(tmp_path: Path) -> None:
    dsc = mirror(tmp_path, b"the real tarball")
    builder = BusyboxBuilder(
        source_spec(dsc, hashlib.sha256(dsc.read_bytes()).hexdigest()), tmp_path
    )

    fetched = builder._fetch()

    assert fetched.read_bytes() == dsc.read_bytes()
    assert (tmp_path / "sources" / "bb.orig.tar.bz2").read_bytes() == b"the real tarball"


def test_a_dsc_that_differs_from_the_pin_is_refused_and_not_kept(tmp_path: Path) -> None:
    dsc = mirror(tmp_path, b"the real tarball")
    builder = BusyboxBuilder(source_spec(dsc, "0" * 64), tmp_path)

    with pytest.raises(BuildError, match="sha256 differs"):
        builder._fetch()
    assert list((tmp_path / "sources").iterdir()) == []


def test_a_tarball_that_differs_from_the_dsc_is_refused(tmp_path: Path) -> None:
    dsc = mirror(tmp_path, b"what the dsc promised")
    builder = BusyboxBuilder(
        source_spec(dsc, hashlib.sha256(dsc.read_bytes()).hexdigest()), tmp_path
    )

    with pytest.raises(BuildError, match=r"bb\.orig\.tar\.bz2: sha256 differs"):
        builder._fetch()
    assert not (tmp_path / "sources" / "bb.orig.tar.bz2").exists()
