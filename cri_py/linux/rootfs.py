"""Paths inside a container's rootfs, resolved and used by file descriptor: open in root,
make a mount point, mount onto a descriptor and check where the mount landed, mask, fill /dev.

Until execve the launcher sees the host's `/`; an image (a symlink) or a sibling container (a
symlink swapped in through a shared volume) must never send it there. So a path inside a rootfs
is resolved once, relative to the rootfs's descriptor, as if it were `/` (openat2 with
RESOLVE_IN_ROOT, or a walk component by component with O_NOFOLLOW), and what is done to it is
done through the descriptor it resolved to: `mkdirat`/`mknodat`/`symlinkat` on a parent's fd,
mounts onto `/proc/self/fd/N` or with move_mount. The order of the steps (which mount, which
mask) is the launcher's; this module does one step at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections import deque
from collections.abc import Iterator

from cri_py.linux import syscalls

# As the kernel's own limit on symlinks followed in one lookup (MAXSYMLINKS).
MAX_SYMLINKS = 40
# Directories the launcher mounts over and then trusts: an image may not make them symlinks.
SPECIAL_DIRECTORIES = ("proc", "sys", "dev")
# Filesystem magic numbers (<linux/magic.h>) a mount of that type must show once made.
FILESYSTEM_MAGIC = {
    "proc": syscalls.PROC_SUPER_MAGIC,
    "tmpfs": syscalls.TMPFS_MAGIC,
    "sysfs": 0x62656572,
    "devpts": 0x1CD1,
    "mqueue": 0x19800202,
    "overlay": 0x794C7630,
}
_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
_OPENAT2_ATTEMPTS = 32


class UnsafeRootfs(Exception):
    """The rootfs is not what the launcher may work on (a symlinked /dev, a procfs that is not
    one, a mount that did not land where it was made): the container is refused."""


def components(path: str) -> tuple[str, ...]:
    """The names of an in-root path after lexical cleaning, '..' stopping at the root (as
    runc cleans a mount destination before resolving it)."""
    cleaned = posixpath.normpath("/" + path)
    return tuple(part for part in cleaned.split("/") if part)


def fd_path(fd: int) -> str:
    """A path the kernel resolves to exactly what `fd` refers to (a magic link)."""
    return f"/proc/self/fd/{fd}"


@contextlib.contextmanager
def closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def open_in_root(
    root_fd: int,
    path: str,
    flags: int = os.O_PATH,
    *,
    follow_last: bool = True,
    no_symlinks: bool = False,
    no_xdev: bool = False,
) -> int:
    """`path` opened as if `root_fd` were `/`: symlinks (absolute ones, '..' in them) resolve
    inside the root and never leave it, magic links (/proc/self/fd/N, /proc/N/root...) are
    refused (ELOOP). `follow_last=False` opens a final symlink itself; `no_symlinks` refuses
    any symlink on the way (ELOOP); `no_xdev` any crossing onto another mount (EXDEV), so
    what is opened lies on the very mount `root_fd` is on. openat2 does it in the kernel;
    without it (ENOSYS) the same rules are walked by hand (`walk_in_root`)."""
    resolve = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
    if no_symlinks:
        resolve |= syscalls.RESOLVE_NO_SYMLINKS
    if no_xdev:
        resolve |= syscalls.RESOLVE_NO_XDEV
    open_flags = flags | os.O_CLOEXEC | (0 if follow_last else os.O_NOFOLLOW)
    for attempt in range(_OPENAT2_ATTEMPTS):
        try:
            return syscalls.openat2(root_fd, path or "/", open_flags, 0, resolve)
        except OSError as e:
            # EAGAIN: a rename or mount raced a '..' in the lookup (the kernel cannot tell
            # whether it stayed inside the root); looked up again, as runc's securejoin does.
            if e.errno == errno.EAGAIN and attempt + 1 < _OPENAT2_ATTEMPTS:
                continue
            if e.errno != errno.ENOSYS:
                raise
            break
    return walk_in_root(
        root_fd, path, flags, follow_last=follow_last, no_symlinks=no_symlinks, no_xdev=no_xdev
    )


def walk_in_root(
    root_fd: int,
    path: str,
    flags: int = os.O_PATH,
    *,
    follow_last: bool = True,
    no_symlinks: bool = False,
    no_xdev: bool = False,
    create: str = "",
) -> int:
    """`open_in_root` without openat2: one component at a time, each opened O_PATH|O_NOFOLLOW
    on its parent's descriptor; a symlink's target is read and walked from the root (absolute)
    or its directory (relative); '..' goes back to the descriptor it came from and stops at the
    root; a symlink on procfs pointing at an absolute path or a `type:[id]` object is a magic
    link and refused. With `create` ("dir" or "file"), missing directories on the way are made
    (mkdirat, 0755) and a missing last component is made as `create` (a file: O_CREAT|O_EXCL|
    O_NOFOLLOW, 0644, empty): a dangling symlink's target is made, inside the root."""
    parts: deque[str] = deque(p for p in path.split("/") if p and p != ".")
    stack = [os.dup(root_fd)]  # descriptors of the directories walked; [0] is the root
    names: list[str] = [""]
    links = 0
    root_mount = mount_id(root_fd) if no_xdev else -1
    try:
        while parts:
            name = parts.popleft()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            last = not parts
            fd = _open_component(
                stack[-1], name, create="" if not create else (create if last else "dir")
            )
            if no_xdev and mount_id(fd) != root_mount:
                os.close(fd)
                raise OSError(errno.EXDEV, f"resolving {path}: {name} is on another mount")
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode) and (follow_last or not last):
                try:
                    target = _link_target(fd, name, no_symlinks)
                finally:
                    os.close(fd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"resolving {path} in the rootfs: too many symlinks")
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                        names.pop()
                parts.extendleft(reversed([p for p in target.split("/") if p and p != "."]))
                continue
            if not last and not stat.S_ISDIR(mode):
                os.close(fd)
                raise OSError(
                    errno.ENOTDIR, f"resolving {path} in the rootfs: {name} is not a directory"
                )
            stack.append(fd)
            names.append(name)
        return _reopen(stack, names, flags)
    finally:
        for fd in stack:
            os.close(fd)


def _open_component(parent: int, name: str, create: str) -> int:
    try:
        return os.open(name, _PATH_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    # Made here, or by a racer in between (EEXIST): opened again without following either way.
    with contextlib.suppress(FileExistsError):
        if create == "dir":
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            made = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, made, 0o644, dir_fd=parent))
    return os.open(name, _PATH_FLAGS | os.O_NOFOLLOW, dir_fd=parent)


def _link_target(fd: int, name: str, no_symlinks: bool) -> str:
    if no_symlinks:
        raise OSError(errno.ELOOP, f"{name} is a symlink, and none may be followed here")
    target = os.readlink("", dir_fd=fd)  # readlinkat on the O_PATH fd of the link itself
    if syscalls.fstatfs_type(fd) == syscalls.PROC_SUPER_MAGIC and (
        target.startswith("/") or ":" in target
    ):
        raise OSError(errno.ELOOP, f"{name} is a magic link ({target}); refusing to follow it")
    return target


def _reopen(stack: list[int], names: list[str], flags: int) -> int:
    """The walk's result with the caller's flags: the O_PATH fd itself, or the last name opened
    again on its parent's fd without following (a swap in between fails with ELOOP)."""
    if flags & os.O_PATH:
        result = os.dup(stack[-1])
        if flags & os.O_DIRECTORY and not stat.S_ISDIR(os.fstat(result).st_mode):
            os.close(result)
            raise OSError(errno.ENOTDIR, f"{names[-1] or '/'} is not a directory")
        return result
    if len(stack) == 1:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=stack[0])
    return os.open(names[-1], flags | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=stack[-2])


def make_directory(root_fd: int, path: str) -> int:
    """An O_PATH fd of the directory `path` in root, made (0755) with every missing parent,
    each by mkdirat on its parent's descriptor."""
    try:
        return open_in_root(root_fd, path, os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        pass
    return walk_in_root(
        root_fd, "/".join(components(path)), os.O_PATH | os.O_DIRECTORY, create="dir"
    )


def make_mount_point(root_fd: int, path: str, is_file: bool) -> int:
    """An O_PATH fd of the mount point `path` in root: what is there (a symlink resolved in
    root), or made: directories by mkdirat, a file by openat(O_CREAT|O_EXCL|O_NOFOLLOW)."""
    cleaned = "/".join(components(path))
    if not is_file:
        return make_directory(root_fd, cleaned)
    if not cleaned:
        raise OSError(errno.EISDIR, "a file cannot be mounted over the rootfs's root")
    try:
        return open_in_root(root_fd, cleaned)
    except FileNotFoundError:
        pass
    return walk_in_root(root_fd, cleaned, create="file")


def refuse_symlinked_special_dirs(root_fd: int) -> None:
    """/proc, /sys and /dev of an image must be real directories (or absent): the launcher
    mounts over them and trusts what it finds there afterwards."""
    for name in SPECIAL_DIRECTORIES:
        try:
            fd = os.open(name, _PATH_FLAGS | os.O_NOFOLLOW, dir_fd=root_fd)
        except FileNotFoundError:
            continue
        with closing(fd):
            mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            raise UnsafeRootfs(f"rootfs: /{name} is a symlink in the image; refusing")
        if not stat.S_ISDIR(mode):
            raise UnsafeRootfs(f"rootfs: /{name} is not a directory in the image; refusing")


def mount_id(fd: int) -> int:
    """The id of the mount `fd` is on (its `mnt_id` in /proc/self/fdinfo). statx says it in
    one system call; reading fdinfo took six and the io stack, for every mount checked."""
    found = syscalls.statx_mount_id(fd)
    if found is not None:
        return found
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "mnt_id":
                return int(value)
    raise OSError(errno.ENOENT, f"/proc/self/fdinfo/{fd} has no mnt_id")


def clone_tree(source_fd: int, recursive: bool) -> int:
    """A detached copy of the mount tree at `source_fd` (a bind mount not yet attached)."""
    flags = syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | syscalls.AT_EMPTY_PATH
    if recursive:
        flags |= syscalls.AT_RECURSIVE
    return syscalls.open_tree("", flags, dirfd=source_fd)


def attach_tree(tree_fd: int, root_fd: int, path: str, target_fd: int) -> int:
    """Attaches the detached mount `tree_fd` onto `target_fd` (`path` in root) and checks that
    `path`, opened again in root, is now that mount. Returns an O_PATH fd of its root."""
    syscalls.move_mount_to_fd(tree_fd, target_fd)
    landed = open_in_root(root_fd, path)
    if mount_id(landed) != mount_id(tree_fd):
        os.close(landed)
        raise UnsafeRootfs(f"rootfs: the mount made at {path} is not what {path} shows; refusing")
    return landed


def mount_onto(
    target_fd: int,
    root_fd: int,
    path: str,
    source: str | None,
    fstype: str,
    flags: int = 0,
    data: str | None = None,
) -> int:
    """Mounts a new `fstype` filesystem onto `target_fd` (`path` in root) through its
    /proc/self/fd link, then checks that `path`, opened again in root, is a new mount of that
    type. Returns an O_PATH fd of the mount's root."""
    before = mount_id(target_fd)
    syscalls.mount(source, fd_path(target_fd), fstype, flags, data)
    return _check_landed(root_fd, path, fstype, before)


def mount_here(
    target_fd: int,
    root_fd: int,
    path: str,
    source: str | None,
    fstype: str,
    flags: int = 0,
    data: str | None = None,
) -> int:
    """`mount_onto` for when there is no /proc to name the fd (after pivot_root, mounting
    /proc itself): the directory `target_fd` is entered and mounted over as ".". The working
    directory is put back."""
    saved = os.open(".", _PATH_FLAGS | os.O_DIRECTORY)
    try:
        os.fchdir(target_fd)
        syscalls.mount(source, ".", fstype, flags, data)
    finally:
        os.fchdir(saved)
        os.close(saved)
    return _check_landed(root_fd, path, fstype, None)


def _check_landed(root_fd: int, path: str, fstype: str, before: int | None) -> int:
    landed = open_in_root(root_fd, path)
    try:
        magic = FILESYSTEM_MAGIC.get(fstype)
        if magic is not None and syscalls.fstatfs_type(landed) != magic:
            raise UnsafeRootfs(f"rootfs: {path} is not the {fstype} just mounted there; refusing")
        if before is not None and mount_id(landed) == before:
            raise UnsafeRootfs(f"rootfs: the {fstype} mounted at {path} is not there; refusing")
    except BaseException:
        os.close(landed)
        raise
    return landed


def remount(mount_fd: int, flags: int, data: str | None = None) -> None:
    """A remount (or a propagation change) of the mount whose root is `mount_fd`."""
    syscalls.mount(None, fd_path(mount_fd), None, flags, data)


def locked_flags(fd: int) -> int:
    """Flags a remount of the mount at `fd` must keep or the kernel refuses it (EPERM):
    nosuid/nodev/noexec already on it. statvfs's ST_* bits are the MS_* bits for these."""
    lockable = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    return os.fstatvfs(fd).f_flag & lockable


def open_procfs(root_fd: int, path: str = "/proc") -> int:
    """An O_PATH fd of `path` in root (reached with no symlink), verified to be procfs
    (fstatfs): masks under /proc on anything else would cover an image's look-alike files (or
    a volume's) and leave the real ones open."""
    try:
        fd = open_in_root(root_fd, path, os.O_PATH | os.O_DIRECTORY, no_symlinks=True)
    except OSError as e:
        raise UnsafeRootfs(f"rootfs: {path} cannot be opened to verify it is procfs: {e}") from e
    if syscalls.fstatfs_type(fd) != syscalls.PROC_SUPER_MAGIC:
        os.close(fd)
        raise UnsafeRootfs(f"rootfs: {path} is not procfs; refusing to apply masks")
    return fd


def verify_procfs(root_fd: int, path: str = "/proc") -> None:
    os.close(open_procfs(root_fd, path))


def _open_under(root_fd: int, path: str) -> tuple[int, str, bool]:
    """Where a masked or read-only `path` is resolved from: a path under /proc from the
    verified procfs, staying on that mount (no crossing onto a volume or a bind mounted
    inside it); anything else from the root. (an owned fd, the path from it, no_xdev)"""
    parts = components(path)
    if len(parts) > 1 and parts[0] == "proc":
        return open_procfs(root_fd), "/".join(parts[1:]), True
    return os.dup(root_fd), path, False


def open_dev_null(root_fd: int) -> int:
    """The container's /dev/null, checked to be the null device (1:3) and reached with no
    symlink: a /dev/null swapped for a link to a /proc file must not be bound over masks."""
    fd = open_in_root(root_fd, "/dev/null", no_symlinks=True)
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
        os.close(fd)
        raise UnsafeRootfs("rootfs: /dev/null is not the null device; refusing to mask with it")
    return fd


def mask_path(root_fd: int, path: str) -> bool:
    """Covers `path` in root (reached with no symlink; under /proc, on the verified procfs): a
    directory with a read-only tmpfs, a file with the container's /dev/null (`open_dev_null`).
    False when `path` does not exist; any other failure raises (fail closed). Checked
    afterwards: `path` shows the tmpfs or the null device."""
    base, relative, no_xdev = _open_under(root_fd, path)
    with closing(base):
        try:
            target = open_in_root(base, relative, no_symlinks=True, no_xdev=no_xdev)
        except FileNotFoundError:
            return False
        with closing(target):
            if stat.S_ISDIR(os.fstat(target).st_mode):
                tmpfs = mount_onto(target, base, relative, "tmpfs", "tmpfs", syscalls.MS_RDONLY)
                os.close(tmpfs)
                return True
            with closing(open_dev_null(root_fd)) as null, closing(clone_tree(null, False)) as tree:
                landed = attach_tree(tree, base, relative, target)
            with closing(landed):
                if os.fstat(landed).st_rdev != os.makedev(1, 3):
                    raise UnsafeRootfs(f"rootfs: {path} is not masked by /dev/null; refusing")
    return True


def make_readonly(root_fd: int, path: str) -> bool:
    """Binds `path` in root (reached with no symlink; under /proc, on the verified procfs)
    over itself, read-only. False when it does not exist; any other failure raises (fail
    closed)."""
    base, relative, no_xdev = _open_under(root_fd, path)
    with closing(base):
        try:
            target = open_in_root(base, relative, no_symlinks=True, no_xdev=no_xdev)
        except FileNotFoundError:
            return False
        with closing(target), closing(clone_tree(target, recursive=True)) as tree:
            landed = attach_tree(tree, base, relative, target)
    with closing(landed):
        flags = syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
        remount(landed, flags | locked_flags(landed))
    return True


def open_dev(root_fd: int) -> int | None:
    """An O_PATH fd of /dev in root, which must be a real directory; None when there is none."""
    try:
        fd = os.open("dev", _PATH_FLAGS | os.O_NOFOLLOW, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISDIR(mode):
        os.close(fd)
        kind = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
        raise UnsafeRootfs(f"rootfs: /dev is {kind}; refusing to populate it")
    return fd


def make_node(dir_fd: int, name: str, mode: int, device: int) -> bool:
    """mknodat in `dir_fd`; False when `name` already exists (as anything: never followed)."""
    try:
        os.mknod(name, mode, device, dir_fd=dir_fd)
    except FileExistsError:
        return False
    return True


def make_symlink(dir_fd: int, name: str, target: str) -> bool:
    """symlinkat in `dir_fd`; False when `name` already exists."""
    try:
        os.symlink(target, name, dir_fd=dir_fd)
    except FileExistsError:
        return False
    return True


def replace_node(dir_fd: int, name: str, mode: int, device: int, uid: int, gid: int) -> None:
    """A device node `name` in `dir_fd`, replacing whatever entry is there (a link is removed,
    not followed), owned by uid:gid (fchownat without following)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
    os.mknod(name, mode, device, dir_fd=dir_fd)
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
