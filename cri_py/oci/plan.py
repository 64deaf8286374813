"""An OCI runtime spec as a launch plan: which namespaces to join or create, which mounts with
which flags in which order, what to mask, who to become and what to run. Pure and stdlib only
(the shim imports it); the launcher (`cri_py.shim.launcher`) performs the plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cri_py.oci.capabilities import CapabilityError, CapabilitySets
from cri_py.oci.hooks import Hooks, hooks_from_spec
from cri_py.oci.seccomp import SeccompError, SeccompFilter, seccomp_filter

# Set by the spec builder when the CRI asks for SupplementalGroupsPolicy Strict: the image's
# /etc/group memberships of the user are then not added (there is no OCI field for it).
SUPPLEMENTAL_GROUPS_POLICY_ANNOTATION = "io.cri-py.supplemental-groups-policy"

# <sys/mount.h> values, repeated here to keep this module free of ctypes.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

# option -> (flags to set, flags to clear), as mount(8) and runc read them.
_FLAG_OPTIONS: Mapping[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "noatime": (MS_NOATIME, 0),
    "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0),
    "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0),
    "remount": (MS_REMOUNT, 0),
    "bind": (MS_BIND, 0),
    "rbind": (MS_BIND | MS_REC, 0),
    "defaults": (0, 0),
}
_PROPAGATION_OPTIONS: Mapping[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
}
# Flags a read-only bind remount must repeat, or the kernel refuses to keep them (EPERM).
_LOCKED_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_RELATIME


class PlanError(ValueError):
    """The spec asks for something the launcher cannot do; the message says what."""


# (container ID, host ID, size): one line of a uid_map / gid_map.
IdRange = tuple[int, int, int]


def host_id(mappings: tuple[IdRange, ...], container_id: int) -> int:
    """The host ID that `container_id` is inside a user namespace with these ranges."""
    for inside, outside, size in mappings:
        if inside <= container_id < inside + size:
            return outside + container_id - inside
    raise PlanError(f"ID {container_id} is not mapped in the container's user namespace")


def _id_ranges(entries: Any) -> tuple[IdRange, ...]:
    return tuple((int(e["containerID"]), int(e["hostID"]), int(e["size"])) for e in entries or ())


def shift_owner_options(
    step: MountStep, uid_mappings: tuple[IdRange, ...], gid_mappings: tuple[IdRange, ...]
) -> MountStep:
    """A tmpfs or devpts mount made by the host's root for a container in a user namespace:
    its `uid=`/`gid=` options name container IDs (a runtime mounting inside the namespace
    would read them so), so they become host IDs, and a tmpfs without them is owned by the
    container's root rather than by the host's (which the container would see as nobody)."""
    if step.fstype not in ("tmpfs", "devpts") or not uid_mappings:
        return step
    options = [o for o in step.data.split(",") if o]
    shifted = []
    for option in options:
        key, _, value = option.partition("=")
        if key in ("uid", "gid") and value.isdigit():
            mappings = uid_mappings if key == "uid" else gid_mappings
            option = f"{key}={host_id(mappings, int(value))}"
        shifted.append(option)
    if step.fstype == "tmpfs":
        for key, mappings in (("uid", uid_mappings), ("gid", gid_mappings)):
            if not any(o.startswith(key + "=") for o in shifted):
                shifted.append(f"{key}={host_id(mappings, 0)}")
    return replace(step, data=",".join(shifted))


def idmapped_overlay(
    step: MountStep, staging: str
) -> tuple[tuple[tuple[str, str], ...], MountStep, str]:
    """An overlay whose lower layers the container sees through its user namespace: each
    `lowerdir` gets a staging dir (`staging/<n>`) where the launcher attaches an idmapped
    clone of it, and the overlay stacks those instead. The upper dir stays plain (as in
    containerd's overlay snapshotter with idmapped layers): what the container writes is
    stored with its host IDs, and the upper dir itself must belong to the container's root
    (it is the overlay's "/"). Returns ((layer, staging dir) pairs, the new step, the upper
    dir or "")."""
    options = []
    layers: list[tuple[str, str]] = []
    upper = ""
    for option in step.data.split(","):
        key, _, value = option.partition("=")
        if key == "lowerdir":
            staged = []
            for index, layer in enumerate(value.split(":")):
                target = f"{staging}/{index}"
                layers.append((layer, target))
                staged.append(target)
            option = "lowerdir=" + ":".join(staged)
        elif key == "upperdir":
            upper = value
        options.append(option)
    return tuple(layers), replace(step, data=",".join(options)), upper


@dataclass(frozen=True)
class MountStep:
    destination: str
    source: str
    fstype: str
    flags: int
    data: str
    # mount(2) with MS_BIND ignores the other flags: they need a remount afterwards.
    remount_flags: int = 0
    propagation: int = 0
    # "rro": read-only all the way down, with mount_setattr(AT_RECURSIVE) after the mount.
    recursive_readonly: bool = False
    # An image volume's directory to show instead of the image's root (cri-py's
    # `imageSubPath`): the overlay is mounted aside and this part of it bound at destination.
    sub_path: str = ""
    # A bind mount shown through the container's user namespace (an idmapped mount).
    idmap: bool = False

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & MS_BIND)


@dataclass(frozen=True)
class DeviceStep:
    """A device node to make in the container (the spec's `linux.devices`)."""

    path: str
    type: str  # "c", "b" (or "u", unbuffered char) or "p" (a FIFO)
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    # To resolve inside the rootfs (a Docker USER string); empty when uid/gid are final.
    username: str = ""
    # SupplementalGroupsPolicy Merge: add the groups the image's /etc/group lists the user in.
    merge_image_groups: bool = True


@dataclass(frozen=True)
class Security:
    """What the launcher applies last, for the init and every exec: capabilities (None: the
    spec has none, keep the runtime's), no_new_privs and a seccomp filter (None: none)."""

    capabilities: CapabilitySets | None = None
    no_new_privileges: bool = False
    seccomp: SeccompFilter | None = None


@dataclass(frozen=True)
class LaunchPlan:
    # (OCI type, path) of namespaces to join, in a safe order (pid last: it affects children).
    join: tuple[tuple[str, str], ...]
    new_mount_ns: bool
    new_pid_ns: bool
    rootfs: str
    readonly_rootfs: bool
    mounts: tuple[MountStep, ...]
    # Mounted after pivot_root: /proc of a new PID namespace must be mounted from inside it.
    late_mounts: tuple[MountStep, ...]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: User
    terminal: bool
    rlimits: tuple[tuple[str, int, int], ...] = ()
    # MS_* flags applied recursively to "/" in the new mount namespace.
    rootfs_propagation: int = MS_SLAVE | MS_REC
    hostname: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    # The container's /sys/fs/cgroup: (name under it, host dir of the container's cgroup) per
    # hierarchy, from the daemon (which knows the host's mounts); name "" on cgroup v2.
    cgroup_mounts: tuple[tuple[str, str], ...] = ()
    security: Security = field(default_factory=lambda: Security())
    devices: tuple[DeviceStep, ...] = ()
    # The pod's user namespace (a pinned file; "" = the host's users), joined last, after
    # every mount is made (by the host's root, which alone may make idmapped mounts), and its
    # (container ID, host ID, size) ranges.
    user_namespace: str = ""
    uid_mappings: tuple[IdRange, ...] = ()
    gid_mappings: tuple[IdRange, ...] = ()
    # The spec's OCI hooks (`cri_py.oci.hooks` says who runs which, where).
    hooks: Hooks = field(default_factory=lambda: Hooks())

    @property
    def joins_pid(self) -> bool:
        return any(kind == "pid" for kind, _ in self.join)

    @property
    def forks_for_pid(self) -> bool:
        """A PID namespace applies to children only: the init must be forked after entering."""
        return self.new_pid_ns or self.joins_pid

    def env_value(self, key: str) -> str | None:
        for entry in self.env:
            name, _, value = entry.partition("=")
            if name == key:
                return value
        return None


def mount_step(mount: Mapping[str, Any]) -> MountStep:
    destination = str(mount.get("destination", ""))
    if not destination.startswith("/"):
        raise PlanError(f"mount destination {destination!r} must be absolute")
    flags = clear = propagation = 0
    recursive_readonly = False
    data = []
    for option in mount.get("options", ()):
        if option == "rro":
            recursive_readonly = True
        elif option in _FLAG_OPTIONS:
            on, off = _FLAG_OPTIONS[option]
            flags = (flags | on) & ~off
            clear |= off
        elif option in _PROPAGATION_OPTIONS:
            propagation = _PROPAGATION_OPTIONS[option]
        else:
            data.append(str(option))
    fstype = str(mount.get("type", "") or "")
    if fstype == "bind":
        flags |= MS_BIND
    remount = 0
    if flags & MS_BIND and flags & ~(MS_BIND | MS_REC):
        remount = MS_REMOUNT | MS_BIND | (flags & _LOCKED_FLAGS)
    return MountStep(
        destination=destination,
        source=str(mount.get("source", "") or fstype),
        fstype="" if flags & MS_BIND else fstype,
        flags=flags,
        data=",".join(data),
        remount_flags=remount,
        propagation=propagation,
        recursive_readonly=recursive_readonly,
        sub_path=str(mount.get("imageSubPath", "") or ""),
        idmap=bool(mount.get("uidMappings") or mount.get("gidMappings")),
    )


def device_step(device: Mapping[str, Any]) -> DeviceStep:
    path = str(device.get("path", ""))
    if not path.startswith("/") or ".." in path.split("/"):
        raise PlanError(f"device path {path!r} must be absolute, without '..'")
    kind = str(device.get("type", ""))
    if kind not in ("c", "b", "u", "p"):
        raise PlanError(f"device {path}: unknown type {kind!r}")
    return DeviceStep(
        path=path,
        type=kind,
        major=int(device.get("major", 0)),
        minor=int(device.get("minor", 0)),
        file_mode=int(device.get("fileMode", 0o666)),
        uid=int(device.get("uid", 0)),
        gid=int(device.get("gid", 0)),
    )


def _user(data: Mapping[str, Any], annotations: Mapping[str, Any]) -> User:
    return User(
        uid=int(data.get("uid", 0)),
        gid=int(data.get("gid", 0)),
        additional_gids=tuple(int(g) for g in data.get("additionalGids", ())),
        username=str(data.get("username", "")),
        merge_image_groups=annotations.get(SUPPLEMENTAL_GROUPS_POLICY_ANNOTATION) != "Strict",
    )


def _security(process: Mapping[str, Any], linux: Mapping[str, Any]) -> Security:
    try:
        capabilities = process.get("capabilities")
        section = linux.get("seccomp")
        return Security(
            capabilities=None if capabilities is None else CapabilitySets.from_spec(capabilities),
            no_new_privileges=bool(process.get("noNewPrivileges", False)),
            seccomp=None if section is None else seccomp_filter(section),
        )
    except (CapabilityError, SeccompError) as e:
        raise PlanError(str(e)) from e


def build_plan(spec: Mapping[str, Any]) -> LaunchPlan:
    process = spec.get("process") or {}
    args = tuple(str(a) for a in process.get("args", ()))
    if not args:
        raise PlanError("the spec's process has no args")
    linux = spec.get("linux") or {}
    join: list[tuple[str, str]] = []
    own: set[str] = set()
    user_namespace = ""
    for ns in linux.get("namespaces", ()):
        kind = str(ns["type"])
        if kind == "user" and ns.get("path"):
            user_namespace = str(ns["path"])
        elif ns.get("path"):
            join.append((kind, str(ns["path"])))
        else:
            own.add(kind)
    uid_mappings = _id_ranges(linux.get("uidMappings"))
    gid_mappings = _id_ranges(linux.get("gidMappings"))
    if bool(user_namespace) != bool(uid_mappings and gid_mappings):
        raise PlanError("a user namespace path needs uidMappings and gidMappings (and only it)")
    unsupported = own - {"mount", "pid"}
    if unsupported:
        raise PlanError(f"new namespaces of type {sorted(unsupported)} are the sandbox's job")
    join.sort(key=lambda item: item[0] == "pid")
    early: list[MountStep] = []
    late: list[MountStep] = []
    for mount in spec.get("mounts", ()):
        step = mount_step(mount)
        if step.idmap and (
            not user_namespace
            or _id_ranges(mount.get("uidMappings")) != uid_mappings
            or _id_ranges(mount.get("gidMappings")) != gid_mappings
        ):
            raise PlanError(
                f"mount {step.destination}: only the container's own user namespace "
                "mappings can idmap a mount"
            )
        if user_namespace:
            step = shift_owner_options(step, uid_mappings, gid_mappings)
        (late if step.fstype == "proc" else early).append(step)
    root = spec.get("root") or {}
    propagation = str(linux.get("rootfsPropagation") or "rslave")
    if propagation not in _PROPAGATION_OPTIONS:
        raise PlanError(f"unknown rootfsPropagation {propagation!r}")
    rlimits = tuple(
        (str(r["type"]), int(r["soft"]), int(r["hard"])) for r in process.get("rlimits", ())
    )
    return LaunchPlan(
        join=tuple(join),
        new_mount_ns="mount" in own,
        new_pid_ns="pid" in own,
        rootfs=str(root.get("path", "")),
        readonly_rootfs=bool(root.get("readonly", False)),
        mounts=tuple(early),
        late_mounts=tuple(late),
        masked_paths=tuple(linux.get("maskedPaths", ())),
        readonly_paths=tuple(linux.get("readonlyPaths", ())),
        args=args,
        env=tuple(str(e) for e in process.get("env", ())),
        cwd=str(process.get("cwd", "/")),
        user=_user(process.get("user") or {}, spec.get("annotations") or {}),
        terminal=bool(process.get("terminal", False)),
        rlimits=rlimits,
        rootfs_propagation=_PROPAGATION_OPTIONS[propagation] | MS_REC,
        hostname=str(spec.get("hostname", "")),
        annotations=dict(spec.get("annotations") or {}),
        security=_security(process, linux),
        devices=tuple(device_step(d) for d in linux.get("devices", ())),
        user_namespace=user_namespace,
        uid_mappings=uid_mappings,
        gid_mappings=gid_mappings,
        hooks=hooks_from_spec(spec),
    )


def parse_passwd(text: str) -> list[tuple[str, int, int]]:
    """(name, uid, gid) of each well-formed /etc/passwd line."""
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            entries.append((fields[0], int(fields[2]), int(fields[3])))
    return entries


def parse_group(text: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """(name, gid, members) of each well-formed /etc/group line."""
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            members = tuple(m for m in (fields[3].split(",") if len(fields) > 3 else ()) if m)
            entries.append((fields[0], int(fields[2]), members))
    return entries


def resolve_user(user: User, passwd: str, group: str) -> User:
    """Numbers for a plan's user, from the rootfs's /etc/passwd and /etc/group texts (Docker's
    USER rules: `name`, `uid`, `name:group`, `uid:gid`; a numeric uid absent from passwd is
    fine and gets gid 0; a name absent is an error). The supplementary groups are the primary
    group (as containerd reports and sets them), the requested ones and, unless the policy is
    Strict, the groups /etc/group lists the user in."""
    passwd_entries = parse_passwd(passwd)
    group_entries = parse_group(group)
    uid, gid, name = user.uid, user.gid, ""
    if user.username:
        who, _, grp = user.username.partition(":")
        if who.isdigit():
            uid, gid = int(who), 0
            for entry_name, entry_uid, entry_gid in passwd_entries:
                if entry_uid == uid:
                    name, gid = entry_name, entry_gid
                    break
        else:
            for entry_name, entry_uid, entry_gid in passwd_entries:
                if entry_name == who:
                    name, uid, gid = entry_name, entry_uid, entry_gid
                    break
            else:
                raise PlanError(f"user {who!r} not found in the image's /etc/passwd")
        if grp:
            if grp.isdigit():
                gid = int(grp)
            else:
                for group_name, group_gid, _ in group_entries:
                    if group_name == grp:
                        gid = group_gid
                        break
                else:
                    raise PlanError(f"group {grp!r} not found in the image's /etc/group")
    else:
        name = next((n for n, u, _ in passwd_entries if u == uid), "")
    groups = [gid, *user.additional_gids]
    if name and user.merge_image_groups:
        groups += [g for _, g, members in group_entries if name in members]
    return User(
        uid=uid,
        gid=gid,
        additional_gids=tuple(dict.fromkeys(groups)),
        merge_image_groups=user.merge_image_groups,
    )


def with_home(env: Sequence[str], uid: int, passwd: str) -> tuple[str, ...]:
    """`env` with HOME set when it has none, as runc does: the home directory of `uid` in the
    image's /etc/passwd, or "/" when it is not there (kubelet and images leave HOME unset for
    most containers; shells, ssh and many programs expect it)."""
    if any(entry.startswith("HOME=") for entry in env):
        return tuple(env)
    home = "/"
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[2].isdigit() and int(fields[2]) == uid:
            home = fields[5] or "/"
            break
    return (*env, f"HOME={home}")


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def executable_candidates(name: str, path_value: str | None) -> list[str]:
    """Paths to try for argv[0]: itself when it holds a slash, else it in each entry of the
    container's PATH (the image's, not the shim's), in order."""
    if "/" in name:
        return [name]
    directories = (DEFAULT_PATH if path_value is None else path_value).split(":")
    return [f"{d.rstrip('/')}/{name}" if d else name for d in directories]
