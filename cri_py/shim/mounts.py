"""The container's filesystem view, built by the launcher inside the container's new mount
namespace: the rootfs, the spec's mounts, /dev, pivot_root, then /proc, masked and read-only
paths. The order comes from the launch plan (`cri_py.oci.plan`); every path inside the rootfs
goes through the descriptor-based steps of `cri_py.linux.rootfs`, never a re-resolved string.
Host paths (the rootfs dir, volume sources, staging dirs beside the rootfs) are the daemon's.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence

from cri_py.linux import mountinfo, rootfs, syscalls
from cri_py.linux.rootfs import closing
from cri_py.oci.plan import (
    DeviceStep,
    IdRange,
    LaunchPlan,
    MountStep,
    host_id,
    idmapped_overlay,
)

# Device nodes of every container's /dev (major, minor), as runc creates them.
DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
    "core": "/proc/kcore",
}
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_LOCKABLE = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC


class MountError(Exception):
    """A step of the container's filesystem failed or was refused; the message names it."""


def _open_source(source: str) -> int:
    """A bind mount's source on the host (the daemon chose it), held by descriptor from here."""
    try:
        return os.open(source, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MountError(f"bind mount source {source} does not exist") from None


def idmapped_clone(source_fd: int, userns_fd: int, recursive: bool) -> int:
    """A detached clone of `source_fd` shown through the user namespace `userns_fd` (host ID
    H + n shows as container ID n). Only a detached clone may get MOUNT_ATTR_IDMAP."""
    tree = rootfs.clone_tree(source_fd, recursive)
    try:
        recursion = syscalls.AT_RECURSIVE if recursive else 0
        syscalls.mount_setattr(
            "",
            syscalls.AT_EMPTY_PATH | recursion,
            syscalls.MOUNT_ATTR_IDMAP,
            userns_fd=userns_fd,
            dirfd=tree,
        )
    except BaseException:
        os.close(tree)
        raise
    return tree


def stage_idmapped_layers(
    step: MountStep,
    staging: str,
    userns_fd: int,
    uid_mappings: tuple[IdRange, ...],
    gid_mappings: tuple[IdRange, ...],
) -> MountStep:
    """An overlay step rewritten to stack idmapped clones of its layers (attached under
    `staging`, on the private mount beside the rootfs: they go with the mount namespace).
    An overlay itself cannot be idmapped (EINVAL); its layers can (Linux 5.19)."""
    layers, step, upper = idmapped_overlay(step, staging)
    for source, target in layers:
        os.makedirs(target, exist_ok=True)
        with (
            closing(os.open(source, _DIR_FLAGS)) as source_fd,
            closing(os.open(target, _DIR_FLAGS)) as target_fd,
            closing(idmapped_clone(source_fd, userns_fd, recursive=False)) as tree,
        ):
            syscalls.move_mount_to_fd(tree, target_fd)
    if upper:
        os.chown(upper, host_id(uid_mappings, 0), host_id(gid_mappings, 0))
    return step


def _after_mount(step: MountStep, landed: int) -> None:
    """What a mount needs once made, on the root of the mount itself (`landed`)."""
    if step.remount_flags:
        rootfs.remount(landed, step.remount_flags | rootfs.locked_flags(landed))
    if step.recursive_readonly:
        # A read-only bind remount covers the top mount only; submounts need mount_setattr.
        syscalls.mount_setattr(
            "",
            syscalls.AT_EMPTY_PATH | syscalls.AT_RECURSIVE,
            syscalls.MOUNT_ATTR_RDONLY,
            dirfd=landed,
        )
    if step.propagation:
        rootfs.remount(landed, step.propagation)


def perform_mount(step: MountStep, root_fd: int, userns_fd: int = -1) -> None:
    """One of the spec's mounts at its destination in root: a bind is a detached clone of the
    source attached onto the mount point's descriptor, a filesystem is mounted onto it; each
    is checked to be what the destination shows afterwards."""
    destination = step.destination
    if step.is_bind:
        if step.idmap and userns_fd < 0:
            raise MountError(f"idmapped mount at {destination} without a user namespace")
        recursive = bool(step.flags & syscalls.MS_REC)
        with closing(_open_source(step.source)) as source:
            is_file = not stat.S_ISDIR(os.fstat(source).st_mode)
            with (
                closing(rootfs.make_mount_point(root_fd, destination, is_file)) as target,
                closing(
                    idmapped_clone(source, userns_fd, recursive)
                    if step.idmap
                    else rootfs.clone_tree(source, recursive)
                ) as tree,
            ):
                landed = rootfs.attach_tree(tree, root_fd, destination, target)
    else:
        with closing(rootfs.make_mount_point(root_fd, destination, False)) as target:
            landed = rootfs.mount_onto(
                target,
                root_fd,
                destination,
                step.source,
                step.fstype,
                step.flags,
                step.data or None,
            )
    with closing(landed):
        _after_mount(step, landed)


def mount_sub_path(step: MountStep, root_fd: int, staging: str) -> None:
    """An image volume's sub path: the overlay is mounted at `staging` (beside the rootfs, on
    the private mount the launcher made of it, so nothing reaches the host; pivot_root leaves
    it behind) and the sub path, resolved inside it, bound read-only at the destination."""
    os.makedirs(staging, exist_ok=True)
    syscalls.mount(step.source, staging, step.fstype, step.flags, step.data or None)
    with closing(os.open(staging, _DIR_FLAGS)) as staged:
        try:
            source = rootfs.open_in_root(staged, step.sub_path)
        except FileNotFoundError:
            raise MountError(
                f"image volume sub path {step.sub_path!r} does not exist in the image"
            ) from None
    with closing(source):
        is_file = not stat.S_ISDIR(os.fstat(source).st_mode)
        with (
            closing(rootfs.make_mount_point(root_fd, step.destination, is_file)) as target,
            closing(rootfs.clone_tree(source, recursive=False)) as tree,
        ):
            landed = rootfs.attach_tree(tree, root_fd, step.destination, target)
    with closing(landed):
        remount = syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
        rootfs.remount(landed, remount | rootfs.locked_flags(landed))
        if step.propagation:
            rootfs.remount(landed, step.propagation)


def mount_cgroups(step: MountStep, root_fd: int, sources: Sequence[tuple[str, str]]) -> None:
    """The container's /sys/fs/cgroup (cgroup v1, as runc does it): a tmpfs holding one dir per
    hierarchy, each a bind mount of the container's own cgroup there, read-only unless the
    spec says rw (privileged). On v2, the container's cgroup dir itself. Runs before
    pivot_root, so the host's hierarchies are still in reach."""
    if not sources:
        return  # cgroups not managed: the empty dir of the container's sysfs stays
    destination = step.destination
    readonly = bool(step.flags & syscalls.MS_RDONLY)
    with closing(rootfs.make_mount_point(root_fd, destination, False)) as target:
        if len(sources) == 1 and not sources[0][0]:  # cgroup v2
            _bind_cgroup(sources[0][1], root_fd, destination, target, readonly)
            return
        tmpfs = rootfs.mount_onto(
            target, root_fd, destination, "tmpfs", "tmpfs", _LOCKABLE, "mode=755"
        )
    with closing(tmpfs):
        for name, source in sources:
            with closing(rootfs.make_directory(tmpfs, name)) as hierarchy:
                _bind_cgroup(source, root_fd, f"{destination}/{name}", hierarchy, readonly)
            controllers = name.split(",")
            if len(controllers) > 1:  # cpu,cpuacct: also reachable as cpu and cpuacct
                for controller in controllers:
                    rootfs.make_symlink(tmpfs, controller, name)
        if readonly:
            rootfs.remount(tmpfs, syscalls.MS_REMOUNT | syscalls.MS_RDONLY | _LOCKABLE, "mode=755")


def _bind_cgroup(source: str, root_fd: int, path: str, target: int, readonly: bool) -> None:
    with (
        closing(_open_source(source)) as source_fd,
        closing(rootfs.clone_tree(source_fd, recursive=False)) as tree,
    ):
        landed = rootfs.attach_tree(tree, root_fd, path, target)
    with closing(landed):
        remount = syscalls.MS_REMOUNT | syscalls.MS_BIND | _LOCKABLE
        rootfs.remount(landed, remount | (syscalls.MS_RDONLY if readonly else 0))


def _mount_point_of(path: str) -> str:
    """The mount point `path` lives on (the deepest mount point containing it)."""
    with open("/proc/self/mountinfo") as f:
        return mountinfo.mount_of(mountinfo.parse(f.read()), path).mount_point


def populate_dev(root_fd: int) -> None:
    """runc's default nodes and links in /dev (a real directory, never a link: refused), each
    made with mknodat/symlinkat on its descriptor; an entry already there is kept."""
    dev = rootfs.open_dev(root_fd)
    if dev is None:
        return
    old = os.umask(0)
    try:
        with closing(dev):
            for name, (major, minor) in DEVICES.items():
                rootfs.make_node(dev, name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            for name, target in DEV_LINKS.items():
                rootfs.make_symlink(dev, name, target)
    finally:
        os.umask(old)


_DEVICE_KINDS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def create_devices(root_fd: int, devices: Sequence[DeviceStep]) -> None:
    """The spec's device nodes, as the host's are (type, numbers, mode, owner). Made, not
    bound: /dev is the container's own tmpfs, and a node there cannot reach the host's /dev.
    Each is made on its parent directory's descriptor; the last component is replaced, not
    followed (a default link, /dev/ptmx -> pts/ptmx, or the client's own /dev/null)."""
    old = os.umask(0)
    try:
        for device in devices:
            parent_path, name = os.path.split(device.path)
            mode = (device.file_mode & 0o7777) | _DEVICE_KINDS[device.type]
            with closing(rootfs.make_directory(root_fd, parent_path)) as parent:
                rootfs.replace_node(
                    parent,
                    name,
                    mode,
                    os.makedev(device.major, device.minor),
                    device.uid,
                    device.gid,
                )
    finally:
        os.umask(old)


def prepare_rootfs(
    plan: LaunchPlan,
    rootfs_mounts: Sequence[MountStep],
    userns_fd: int = -1,
    before_pivot: Callable[[], None] | None = None,
) -> None:
    """Inside the new mount namespace: the rootfs, the spec's mounts, then pivot_root. With
    a user namespace (`userns_fd`), overlays stack idmapped layers and idmap binds use it.
    `before_pivot` runs once every mount is made, in the rootfs, before pivot_root: the OCI
    create hooks' point."""
    # rslave (the default): host mounts made later still reach rslave volumes, nothing
    # mounted here reaches the host. rshared keeps the tree the host's peer, for rshared
    # volumes; then the rootfs's parent must be private, or the overlay below would appear
    # on the host too (and pivot_root refuses a shared parent).
    syscalls.mount(None, "/", None, plan.rootfs_propagation)
    root = plan.rootfs
    syscalls.mount(None, _mount_point_of(root), None, syscalls.MS_PRIVATE)
    idmapped_dir = os.path.join(os.path.dirname(root), "idmapped")
    for step in rootfs_mounts:
        try:
            if userns_fd >= 0 and step.fstype == "overlay":
                step = stage_idmapped_layers(
                    step,
                    os.path.join(idmapped_dir, "rootfs"),
                    userns_fd,
                    plan.uid_mappings,
                    plan.gid_mappings,
                )
            syscalls.mount(step.source, root, step.fstype, step.flags, step.data or None)
        except OSError as e:
            raise MountError(f"mounting the rootfs at {root}: {e}") from e
    # From here the rootfs is this descriptor: every path inside it is resolved relative to it.
    with closing(os.open(root, _DIR_FLAGS)) as root_fd:
        try:
            rootfs.refuse_symlinked_special_dirs(root_fd)
        except rootfs.UnsafeRootfs as e:
            raise MountError(str(e)) from None
        for index, step in enumerate(plan.mounts):
            try:
                if userns_fd >= 0 and step.fstype == "overlay":
                    step = stage_idmapped_layers(
                        step,
                        os.path.join(idmapped_dir, str(index)),
                        userns_fd,
                        plan.uid_mappings,
                        plan.gid_mappings,
                    )
                if step.sub_path:
                    staging = os.path.join(os.path.dirname(root), "image-volumes", str(index))
                    mount_sub_path(step, root_fd, staging)
                elif step.fstype == "cgroup":
                    mount_cgroups(step, root_fd, plan.cgroup_mounts)
                else:
                    perform_mount(step, root_fd, userns_fd)
            except (OSError, rootfs.UnsafeRootfs) as e:
                raise MountError(f"mount {step.source} at {step.destination}: {e}") from e
        try:
            populate_dev(root_fd)
            create_devices(root_fd, plan.devices)
        except (OSError, rootfs.UnsafeRootfs) as e:
            raise MountError(f"creating device nodes: {e}") from e
        os.fchdir(root_fd)
    if before_pivot is not None:
        before_pivot()
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
    # only the new root (runc's trick: no put_old directory needed in the image). The old root
    # is this namespace's copy of the host's tree: with rshared propagation (a Bidirectional
    # volume) its mounts are the host's peers, and detaching them as they are would unmount
    # their leaf mounts on the host too (another container's volume mounts, a CSI node
    # plugin's). Made slaves first: an unmount here then never propagates out.
    # "." names the old root only from a descriptor of it: after pivot_root the working
    # directory is still the new root, and mount(2) does not step up to the mount stacked on it
    # (umount2 does).
    with closing(os.open("/", _DIR_FLAGS)) as old_root:
        syscalls.pivot_root(".", ".")
        os.fchdir(old_root)
    syscalls.mount(None, ".", None, syscalls.MS_SLAVE | syscalls.MS_REC)
    syscalls.umount2(".", syscalls.MNT_DETACH)
    os.chdir("/")


def _under_proc(path: str) -> bool:
    return rootfs.components(path)[:1] == ("proc",)


def finish_mounts(plan: LaunchPlan) -> None:
    """After pivot_root: /proc (from inside the PID namespace), masked and read-only paths,
    all relative to a descriptor of the new root. Masks and read-only paths under /proc go on
    only once /proc is verified to be procfs, and fail closed: only a path that does not
    exist is skipped."""
    with closing(os.open("/", _DIR_FLAGS)) as root_fd:
        for step in plan.late_mounts:
            try:
                # No /proc yet to name a descriptor by: mounted from inside the directory.
                with closing(rootfs.make_mount_point(root_fd, step.destination, False)) as target:
                    landed = rootfs.mount_here(
                        target,
                        root_fd,
                        step.destination,
                        step.source,
                        step.fstype,
                        step.flags,
                        step.data or None,
                    )
                with closing(landed):
                    _after_mount(step, landed)
            except (OSError, rootfs.UnsafeRootfs) as e:
                raise MountError(f"mount {step.fstype} at {step.destination}: {e}") from e
        if any(map(_under_proc, (*plan.masked_paths, *plan.readonly_paths))):
            try:
                rootfs.verify_procfs(root_fd)
            except rootfs.UnsafeRootfs as e:
                raise MountError(str(e)) from None
        for path in plan.masked_paths:
            try:
                rootfs.mask_path(root_fd, path)
            except (OSError, rootfs.UnsafeRootfs) as e:
                raise MountError(f"masking {path}: {e}") from e
        for path in plan.readonly_paths:
            try:
                rootfs.make_readonly(root_fd, path)
            except (OSError, rootfs.UnsafeRootfs) as e:
                raise MountError(f"making {path} read-only: {e}") from e
    if plan.readonly_rootfs:
        # A bind remount sets exactly the flags it names: keep nosuid/nodev/noexec already on
        # the rootfs (nodev when device rules cannot be enforced, see spec/devices.py).
        with closing(os.open("/", _DIR_FLAGS)) as root_fd:
            flags = syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
            syscalls.mount(None, "/", None, flags | rootfs.locked_flags(root_fd))
