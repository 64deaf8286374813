"""Resolution inside a rootfs against a fake tree in a temp dir: every symlink shape, with
openat2 and with the hand walk used without it. Mount primitives need root (skipped without)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cri_py.linux import rootfs, syscalls

Opener = Callable[..., int]


def _without_openat2(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object) -> int:
        raise OSError(errno.ENOSYS, "openat2: Function not implemented")

    monkeypatch.setattr(syscalls, "openat2", missing)


@pytest.fixture(params=["openat2", "walk"])
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Opener:
    """open_in_root as the kernel does it, and as the fallback walk does it (openat2 made
    to fail with ENOSYS, as on a kernel without it)."""
    if request.param == "walk":
        _without_openat2(monkeypatch)
    return rootfs.open_in_root


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """(host dir outside the root, the root, an O_PATH fd of the root). The root holds:
    etc/hosts, a/b/c (dirs), and symlinks of every shape."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("root")
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "secret").write_text("inside")
    links = {
        "abs_etc": "/etc",  # absolute: resolves from the root
        "rel_etc": "etc",
        "up": "../../../..",  # '..' above the root: stays at the root
        "up_secret": "../../secret",
        "chain1": "chain2",
        "chain2": "/chain3",
        "chain3": "etc/hosts",
        "loop1": "loop2",
        "loop2": "loop1",
        "dangling": "/nowhere/file",
        "host_abs": str(host),  # the host's dir by absolute path: inside the root, absent
        "host_rel": os.path.relpath(host, root),
        "self_exe": "/proc/self/exe",
    }
    for name, target in links.items():
        (root / name).symlink_to(target)
    (root / "a" / "b" / "to_root").symlink_to("/")
    (root / "a" / "b" / "parent").symlink_to("..")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield host, root, fd
    os.close(fd)


def _identity(fd: int) -> tuple[int, int]:
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def _same(fd: int, path: Path) -> bool:
    st = os.lstat(path)
    return _identity(fd) == (st.st_dev, st.st_ino)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/hosts", "etc/hosts"),
        ("etc/hosts", "etc/hosts"),
        ("/abs_etc/hosts", "etc/hosts"),
        ("/rel_etc/hosts", "etc/hosts"),
        ("/up/etc/hosts", "etc/hosts"),
        ("/up_secret", "secret"),
        ("/../../secret", "secret"),
        ("/a/b/c/../../../secret", "secret"),
        ("/chain1", "etc/hosts"),
        ("/a/b/to_root/secret", "secret"),
        ("/a/b/parent/b/c", "a/b/c"),
        ("/", "."),
        ("/a/./b//c", "a/b/c"),
    ],
)
def test_symlinks_resolve_inside_the_root(
    opener: Opener, tree: tuple[Path, Path, int], path: str, expected: str
) -> None:
    _, root, fd = tree
    assert _same(opener(fd, path), root / expected)


def test_links_to_the_host_resolve_inside_the_root_and_miss(
    opener: Opener, tree: tuple[Path, Path, int]
) -> None:
    _, _, fd = tree
    for name in ("/host_abs/secret", "/host_rel/secret"):
        with pytest.raises(FileNotFoundError):
            opener(fd, name)


def test_a_loop_fails_with_eloop(opener: Opener, tree: tuple[Path, Path, int]) -> None:
    with pytest.raises(OSError) as raised:
        opener(tree[2], "/loop1")
    assert raised.value.errno == errno.ELOOP


def test_a_magic_link_is_refused(opener: Opener) -> None:
    # The host's / as the root: /proc/self/exe is a magic link there.
    root = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as raised:
            opener(root, "/proc/self/exe")
        assert raised.value.errno == errno.ELOOP
        with pytest.raises(OSError) as raised:
            opener(root, f"/proc/self/fd/{root}/etc")
        assert raised.value.errno == errno.ELOOP
        # /proc/self itself is a plain link ("<pid>"), followed.
        fd = opener(root, "/proc/self/fd")
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        os.close(fd)
    finally:
        os.close(root)


def test_a_last_symlink_is_opened_itself_without_follow(
    opener: Opener, tree: tuple[Path, Path, int]
) -> None:
    _, root, fd = tree
    assert _same(opener(fd, "/abs_etc", follow_last=False), root / "abs_etc")
    assert _same(opener(fd, "/abs_etc/hosts", follow_last=False), root / "etc" / "hosts")


def test_no_symlinks_refuses_any_link_on_the_way(
    opener: Opener, tree: tuple[Path, Path, int]
) -> None:
    _, root, fd = tree
    assert _same(opener(fd, "/etc/hosts", no_symlinks=True), root / "etc" / "hosts")
    for path in ("/abs_etc/hosts", "/chain1"):
        with pytest.raises(OSError) as raised:
            opener(fd, path, no_symlinks=True)
        assert raised.value.errno == errno.ELOOP


def test_a_file_in_the_middle_is_not_a_directory(
    opener: Opener, tree: tuple[Path, Path, int]
) -> None:
    with pytest.raises(NotADirectoryError):
        opener(tree[2], "/secret/x")


def test_flags_other_than_o_path_open_the_resolved_file(
    opener: Opener, tree: tuple[Path, Path, int]
) -> None:
    fd = opener(tree[2], "/chain1", os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"root"
    finally:
        os.close(fd)
    with pytest.raises(NotADirectoryError):
        opener(tree[2], "/chain1", os.O_PATH | os.O_DIRECTORY)


def test_the_walk_is_used_only_when_openat2_is_missing(
    monkeypatch: pytest.MonkeyPatch, tree: tuple[Path, Path, int]
) -> None:
    def denied(*args: object) -> int:
        raise OSError(errno.EPERM, "openat2: Operation not permitted")

    monkeypatch.setattr(syscalls, "openat2", denied)
    with pytest.raises(PermissionError):
        rootfs.open_in_root(tree[2], "/etc/hosts")


def test_a_lookup_raced_by_a_rename_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, tree: tuple[Path, Path, int]
) -> None:
    real = syscalls.openat2
    calls: list[str] = []

    def racy(*args: object) -> int:
        calls.append("call")
        if len(calls) < 3:
            raise OSError(errno.EAGAIN, "openat2: Resource temporarily unavailable")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(syscalls, "openat2", racy)
    _, root, fd = tree
    assert _same(rootfs.open_in_root(fd, "/up/etc/hosts"), root / "etc" / "hosts")
    assert len(calls) == 3


@pytest.mark.parametrize("walk", [False, True])
def test_mount_points_are_made_inside_the_root_through_links(
    monkeypatch: pytest.MonkeyPatch, tree: tuple[Path, Path, int], walk: bool
) -> None:
    if walk:
        _without_openat2(monkeypatch)
    host, root, fd = tree
    assert _same(
        rootfs.make_mount_point(fd, "/host_abs/new/dir", False),
        root / host.relative_to("/") / "new" / "dir",
    )
    assert _same(rootfs.make_mount_point(fd, "/up/x/y", False), root / "x" / "y")
    # A dangling link's target is made, inside the root.
    made = rootfs.make_mount_point(fd, "/dangling", True)
    assert _same(made, root / "nowhere" / "file")
    assert (root / "nowhere" / "file").stat().st_size == 0
    # What exists is used as it is; '..' in a destination stops at the root.
    assert _same(rootfs.make_mount_point(fd, "/../../etc/hosts", True), root / "etc" / "hosts")
    assert (root / "etc" / "hosts").read_text() == "root"
    assert sorted(p.name for p in host.iterdir()) == ["secret"]


def test_components_clean_lexically_and_stop_at_the_root() -> None:
    assert rootfs.components("/a/../../b/./c//") == ("b", "c")
    assert rootfs.components("") == ()
    assert rootfs.components("../..") == ()


def test_symlinked_special_directories_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "proc").mkdir()
    (root / "sys").mkdir()
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        rootfs.refuse_symlinked_special_dirs(fd)  # no /dev at all is fine
        (root / "dev").symlink_to(tmp_path)
        with pytest.raises(rootfs.UnsafeRootfs, match="/dev is a symlink in the image"):
            rootfs.refuse_symlinked_special_dirs(fd)
        (root / "dev").unlink()
        (root / "dev").mkdir()
        (root / "sys").rmdir()
        (root / "sys").write_text("")
        with pytest.raises(rootfs.UnsafeRootfs, match="/sys is not a directory"):
            rootfs.refuse_symlinked_special_dirs(fd)
    finally:
        os.close(fd)


def test_open_dev_refuses_a_symlinked_dev(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        assert rootfs.open_dev(fd) is None
        (root / "dev").symlink_to(tmp_path)
        with pytest.raises(rootfs.UnsafeRootfs, match="/dev is a symlink"):
            rootfs.open_dev(fd)
    finally:
        os.close(fd)


def test_links_are_made_on_the_directory_fd_and_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "fd").symlink_to(outside / "fd")  # an image's own link: kept, not followed
    fd = os.open(dev, os.O_PATH | os.O_DIRECTORY)
    try:
        assert rootfs.make_symlink(fd, "stdin", "/proc/self/fd/0")
        assert not rootfs.make_symlink(fd, "fd", "/proc/self/fd")
    finally:
        os.close(fd)
    assert os.readlink(dev / "stdin") == "/proc/self/fd/0"
    assert os.readlink(dev / "fd") == str(outside / "fd")
    assert not any(outside.iterdir())


# --- mount primitives: root only ----------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def _in_child(body: Callable[[], None]) -> None:
    """Runs `body` in a forked child inside a private mount namespace of its own: every
    mount it makes goes with the child. A failure's text comes back as this test's failure."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        code = 0
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            body()
        except BaseException:
            import traceback

            os.write(write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        report = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


@pytest.fixture
def mount_root(tmp_path: Path) -> tuple[Path, Path]:
    """(a host dir, a root with dev/null, a /proc dir, a link `hostlink` -> the host dir and
    a link `abs` -> /target)."""
    host = tmp_path / "host"
    host.mkdir()
    root = tmp_path / "root"
    for name in ("dev", "proc", "target", "data"):
        (root / name).mkdir(parents=True)
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "data" / "file").write_text("data")
    (root / "hostlink").symlink_to(host)
    (root / "abs").symlink_to("/target")
    return host, root


@needs_root
def test_a_mount_through_an_absolute_link_lands_inside_the_root(
    mount_root: tuple[Path, Path],
) -> None:
    host, root = mount_root

    def body() -> None:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        target = rootfs.make_mount_point(fd, "/hostlink/mnt", False)
        landed = rootfs.mount_onto(target, fd, "/hostlink/mnt", "tmpfs", "tmpfs")
        assert syscalls.fstatfs_type(landed) == syscalls.TMPFS_MAGIC
        assert os.path.ismount(root / host.relative_to("/") / "mnt")
        assert not list(host.iterdir())
        # A bind through a link: the detached clone attached onto the fd, checked by mount id.
        source = os.open(root / "data", os.O_PATH | os.O_DIRECTORY)
        target = rootfs.make_mount_point(fd, "/abs/bound", False)
        tree = rootfs.clone_tree(source, recursive=False)
        landed = rootfs.attach_tree(tree, fd, "/abs/bound", target)
        assert (root / "target" / "bound" / "file").read_text() == "data"
        assert rootfs.mount_id(landed) == rootfs.mount_id(tree)

    _in_child(body)
    assert not list(host.iterdir())


@needs_root
def test_masks_fail_closed_and_only_a_missing_path_is_skipped(
    mount_root: tuple[Path, Path],
) -> None:
    _, root = mount_root
    (root / "data" / "dir").mkdir()
    (root / "data" / "link").symlink_to("file")

    def body() -> None:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        assert rootfs.mask_path(fd, "/data/file")
        assert (root / "data" / "file").read_text() == ""
        assert rootfs.mask_path(fd, "/data/dir")
        with pytest.raises(OSError):
            (root / "data" / "dir" / "x").write_text("x")  # a read-only tmpfs
        assert not rootfs.mask_path(fd, "/data/missing")
        with pytest.raises(OSError) as raised:
            rootfs.mask_path(fd, "/data/link")
        assert raised.value.errno == errno.ELOOP
        assert rootfs.make_readonly(fd, "/target")
        with pytest.raises(OSError) as raised:
            (root / "target" / "x").write_text("x")
        assert raised.value.errno == errno.EROFS

    _in_child(body)


@needs_root
def test_a_fake_dev_null_is_not_used_to_mask(mount_root: tuple[Path, Path]) -> None:
    _, root = mount_root
    (root / "dev" / "null").unlink()
    (root / "dev" / "null").symlink_to("/data/file")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            rootfs.open_dev_null(fd)
        (root / "dev" / "null").unlink()
        (root / "dev" / "null").write_text("")
        with pytest.raises(rootfs.UnsafeRootfs, match="not the null device"):
            rootfs.open_dev_null(fd)
    finally:
        os.close(fd)


@needs_root
def test_procfs_is_verified_before_masks(mount_root: tuple[Path, Path]) -> None:
    _, root = mount_root

    def body() -> None:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        with pytest.raises(rootfs.UnsafeRootfs, match="/proc is not procfs"):
            rootfs.verify_procfs(fd)
        target = rootfs.make_mount_point(fd, "/proc", False)
        # Mounted as "." from inside the directory: no /proc needed to name the fd.
        cwd = os.getcwd()
        landed = rootfs.mount_here(target, fd, "/proc", "proc", "proc")
        assert os.getcwd() == cwd
        assert syscalls.fstatfs_type(landed) == syscalls.PROC_SUPER_MAGIC
        rootfs.verify_procfs(fd)

    _in_child(body)


@needs_root
@pytest.mark.parametrize("walk", [False, True])
def test_masks_under_proc_stay_on_the_verified_procfs(
    mount_root: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, walk: bool
) -> None:
    _, root = mount_root
    if walk:
        _without_openat2(monkeypatch)

    def body() -> None:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
        with rootfs.closing(rootfs.make_mount_point(fd, "/proc", False)) as target:
            os.close(rootfs.mount_here(target, fd, "/proc", "proc", "proc"))
        assert rootfs.mask_path(fd, "/proc/keys")
        assert rootfs.mask_path(fd, "/proc/acpi")
        assert os.stat(root / "proc" / "keys").st_rdev == os.makedev(1, 3)
        assert os.listdir(root / "proc" / "acpi") == []
        assert not rootfs.mask_path(fd, "/proc/no-such-file")
        # Something mounted inside /proc (a volume over /proc/sys): masks and read-only
        # paths are not applied through it, they fail.
        syscalls.mount("tmpfs", str(root / "proc" / "sys"), "tmpfs", 0)
        os.mkdir(root / "proc" / "sys" / "kernel")
        for apply in (rootfs.mask_path, rootfs.make_readonly):
            with pytest.raises(OSError) as raised:
                apply(fd, "/proc/sys/kernel")
            assert raised.value.errno == errno.EXDEV

    _in_child(body)


@pytest.mark.parametrize("path", ["/", "/proc", "/sys", "/dev"])
def test_the_mount_id_statx_gives_is_the_one_fdinfo_gives(path: str) -> None:
    # Mount checks compare these ids with each other and with mountinfo's: both sources
    # must name the same mount.
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            fdinfo = int(next(line for line in f if line.startswith("mnt_id:")).split(":")[1])
        assert syscalls.statx_mount_id(fd) == fdinfo == rootfs.mount_id(fd)
    finally:
        os.close(fd)
