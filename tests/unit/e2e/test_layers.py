import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from imagelab.catalog import AppendSpec, CopySpec, LayerRecipe, PathSpec
from imagelab.debian import Package
from imagelab.environment import EPOCH, BuildError
from imagelab.layers import Entry, LayerTree, build_layer, gzip_deterministic, layer_tar

from tests.unit.e2e.elf_fixture import make_elf64
from tests.unit.e2e.reports import recipe

TRIPLET = "x86_64-linux-gnu"


def fake_package(root: Path, name: str, files: dict[str, bytes | str]) -> Package:
    """An unpacked package: bytes are regular files, str values are symlink texts."""
    tree = root / name
    for path, content in files.items():
        host = tree / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            host.symlink_to(content)
        else:
            host.write_bytes(content)
            host.chmod(0o755)
    return Package(name, "1.0", "amd64", tree, ())


@pytest.fixture
def packages(tmp_path: Path) -> dict[str, Package]:
    libdir = f"/usr/lib/{TRIPLET}"
    return {
        "tool": fake_package(
            tmp_path, "tool", {"/usr/bin/tool": make_elf64("/lib64/ld-fake.so.2", ["libfoo.so.1"])}
        ),
        "libfoo1": fake_package(
            tmp_path,
            "libfoo1",
            {
                f"{libdir}/libfoo.so.1": "libfoo.so.1.2.3",
                f"{libdir}/libfoo.so.1.2.3": make_elf64(None, ["libc.so.6"]),
            },
        ),
        "libc": fake_package(
            tmp_path,
            "libc",
            {
                "/lib64/ld-fake.so.2": f"/lib/{TRIPLET}/ld-fake.so.2",
                f"/lib/{TRIPLET}/ld-fake.so.2": b"loader",
                f"/lib/{TRIPLET}/libc.so.6": make_elf64(None, []),
            },
        ),
    }


def copy_tool() -> LayerRecipe:
    return recipe(
        packages=("tool",), copies=(CopySpec("tool", "/usr/bin/tool", "/usr/bin/tool", None),)
    )


def test_copied_binary_brings_its_loader_and_libraries_with_their_symlinks(
    packages: dict[str, Package],
) -> None:
    tree = build_layer(copy_tool(), {}, packages, TRIPLET)

    kinds = {path: (entry.kind, entry.target) for path, entry in tree.entries.items()}
    assert kinds["/usr/bin/tool"] == ("file", "")
    assert kinds["/lib64/ld-fake.so.2"] == ("symlink", f"/lib/{TRIPLET}/ld-fake.so.2")
    assert kinds[f"/lib/{TRIPLET}/ld-fake.so.2"] == ("file", "")
    assert kinds[f"/usr/lib/{TRIPLET}/libfoo.so.1"] == ("symlink", "libfoo.so.1.2.3")
    assert kinds[f"/usr/lib/{TRIPLET}/libfoo.so.1.2.3"] == ("file", "")
    assert kinds[f"/lib/{TRIPLET}/libc.so.6"] == ("file", "")
    assert tree.packages_used == {"tool", "libfoo1", "libc"}


def test_libraries_a_lower_layer_has_are_not_copied_again(packages: dict[str, Package]) -> None:
    lower = {
        "/lib64/ld-fake.so.2": Entry("symlink", 0o777, target="x"),
        f"/lib/{TRIPLET}/libc.so.6": Entry("file", 0o755, data=b""),
    }

    tree = build_layer(copy_tool(), lower, packages, TRIPLET)

    assert "/lib64/ld-fake.so.2" not in tree.entries
    assert f"/lib/{TRIPLET}/libc.so.6" not in tree.entries
    assert f"/usr/lib/{TRIPLET}/libfoo.so.1.2.3" in tree.entries


def test_a_library_no_package_ships_is_a_build_error_naming_it(
    packages: dict[str, Package],
) -> None:
    del packages["libfoo1"]

    with pytest.raises(BuildError, match=r"needs libfoo\.so\.1"):
        build_layer(copy_tool(), {}, packages, TRIPLET)


def test_busybox_applets_become_hard_links_next_to_the_binary(tmp_path: Path) -> None:
    # A stand-in busybox: what matters is what `busybox --list` prints.
    script = b"#!/bin/sh\nprintf '[\\nbusybox\\nls\\nsh\\n'\n"
    package = fake_package(tmp_path, "busybox", {"/bin/busybox": script})

    tree = build_layer(
        recipe(
            packages=("busybox",),
            copies=(CopySpec("busybox", "/bin/busybox", "/bin/busybox", None),),
            busybox_applets="/bin/busybox",
        ),
        {},
        {"busybox": package},
        TRIPLET,
    )

    links = {path: e.target for path, e in tree.entries.items() if e.kind == "hardlink"}
    assert links == {"/bin/[": "/bin/busybox", "/bin/ls": "/bin/busybox", "/bin/sh": "/bin/busybox"}


def test_paths_set_modes_and_owners_and_append_extends_the_lower_file() -> None:
    lower = {"/etc/passwd": Entry("file", 0o644, data=b"root:x:0:0::/root:/bin/sh\n")}

    tree = build_layer(
        recipe(
            paths=(
                PathSpec("/tmp", "dir", 0o1777, None, None, "", ""),
                PathSpec("/home/u", "dir", None, 1000, 1000, "", ""),
                PathSpec("/var/run", "symlink", None, None, None, "/run", ""),
            ),
            appends=(AppendSpec("/etc/passwd", "u:x:1000:1000::/home/u:/bin/sh\n"),),
        ),
        lower,
        {},
        TRIPLET,
    )

    assert tree.entries["/tmp"].mode == 0o1777
    assert (tree.entries["/home/u"].uid, tree.entries["/home"].uid) == (1000, 0)
    assert tree.entries["/var/run"].target == "/run"
    assert tree.entries["/etc/passwd"].content() == (
        b"root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n"
    )


def sample_tree() -> LayerTree:
    tree = LayerTree()
    tree.put("/bin/busybox", Entry("file", 0o755, data=b"\x7fELF..."))
    tree.put("/bin/[", Entry("hardlink", 0o755, target="/bin/busybox"))
    tree.put("/usr/local/libexec/nnp/id", Entry("file", 0o4755, data=b"id"))
    tree.put("/var/run", Entry("symlink", 0o777, target="/run"))
    return tree


def test_layer_tar_is_byte_identical_for_identical_trees() -> None:
    assert layer_tar(sample_tree()) == layer_tar(sample_tree())


def test_layer_tar_puts_hard_links_after_their_targets_and_fixes_metadata() -> None:
    with tarfile.open(fileobj=io.BytesIO(layer_tar(sample_tree()))) as tar:
        members = tar.getmembers()

    names = [member.name for member in members]
    # "[" sorts before "busybox": the link must still come after the file it links to.
    assert names.index("bin/busybox") < names.index("bin/[")
    assert {member.mtime for member in members} == {EPOCH}
    assert {(member.uid, member.gid) for member in members} == {(0, 0)}
    by_name = {member.name: member for member in members}
    assert by_name["bin/["].islnk() and by_name["bin/["].linkname == "bin/busybox"
    assert by_name["usr/local/libexec/nnp/id"].mode == 0o4755
    assert by_name["usr/local/libexec"].isdir()


def test_gzip_is_deterministic_and_round_trips() -> None:
    data = os.urandom(1000) * 3

    assert gzip_deterministic(data) == gzip_deterministic(data)
    assert gzip.decompress(gzip_deterministic(data)) == data
