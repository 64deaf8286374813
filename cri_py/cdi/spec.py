"""A CDI spec file's text as a checked, typed `CdiSpec`: the fields of CDI versions 0.3.0
to 1.1.0, each allowed only from the version that introduced it, unknown keys refused (the
reference parser reads strictly too). Pure: the caller reads the file.

Version-gated fields (the specification's own table): `mounts[].type` needs 0.4.0;
`deviceNodes[].hostPath` and device names starting with a digit 0.5.0; `annotations` and a
`.` in the class 0.6.0; `intelRdt` and `additionalGids` 0.7.0; `netDevices` and intelRdt's
`schemata` / `enableMonitoring` 1.1.0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from cri_py.cdi.names import CdiNameError, check_device_name, parse_kind

# Released versions a spec may name, oldest first (0.1.0 and 0.2.0 predate the format in use).
VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
HOOK_NAMES = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
# A device node's `permissions` that asks for no cgroup access at all.
NO_PERMISSIONS = "none"
# Bound on a spec file, far above any real one (a GPU node's specs are tens of KB).
MAX_SPEC_BYTES = 4 << 20


class CdiSpecError(ValueError):
    """A spec file that is not a valid CDI spec; the message says where and why."""


@dataclass(frozen=True)
class DeviceNodeEdit:
    path: str
    host_path: str = ""
    # "" (take the host node's), "c", "b", "u" or "p".
    type: str = ""
    # 0 with no type: taken from the host node (as the reference implementation reads it).
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    # Cgroup access: "" means "rwm", "none" none.
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class MountEdit:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str = ""


@dataclass(frozen=True)
class HookEdit:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNodeEdit, ...] = ()
    mounts: tuple[MountEdit, ...] = ()
    hooks: tuple[HookEdit, ...] = ()
    additional_gids: tuple[int, ...] = ()
    # Edits cri-py cannot make (`intelRdt`, `netDevices`): kept by name so that a container
    # asking for such a device is refused, while other devices of the file stay usable.
    unsupported: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (
            self.env
            or self.device_nodes
            or self.mounts
            or self.hooks
            or self.additional_gids
            or self.unsupported
        )


@dataclass(frozen=True)
class CdiSpec:
    path: str
    version: str
    vendor: str
    device_class: str
    edits: ContainerEdits = field(default_factory=ContainerEdits)
    # Device name -> its edits, in the file's order.
    devices: Mapping[str, ContainerEdits] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"{self.vendor}/{self.device_class}"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class _Reader:
    """Strict, typed access to one spec's data, remembering the newest version a field used."""

    def __init__(self) -> None:
        self.needs = "0.3.0"
        self.needs_why = ""

    def require(self, version: str, why: str) -> None:
        if _version_key(version) > _version_key(self.needs):
            self.needs, self.needs_why = version, why

    @staticmethod
    def mapping(value: Any, where: str, known: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise CdiSpecError(f"{where}: expected a mapping, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise CdiSpecError(f"{where}: unknown field {unknown[0]!r}")
        return value

    @staticmethod
    def string(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise CdiSpecError(f"{where}: expected a string, got {value!r}")
        return value

    @staticmethod
    def integer(value: Any, where: str, low: int = 0, high: int = (1 << 32) - 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CdiSpecError(f"{where}: expected an integer from {low} to {high}, got {value!r}")
        return int(value)

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise CdiSpecError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(self.string(v, f"{where}[{i}]") for i, v in enumerate(value))

    def items(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise CdiSpecError(f"{where}: expected a list, got {type(value).__name__}")
        return value

    def annotations(self, value: Any, where: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise CdiSpecError(f"{where}: expected a mapping of strings")
        if value:
            self.require("0.6.0", f"{where} (annotations)")

    def env(self, value: Any, where: str) -> tuple[str, ...]:
        entries = self.strings(value, where)
        for i, entry in enumerate(entries):
            if entry.find("=") <= 0:
                raise CdiSpecError(f"{where}[{i}]: {entry!r} is not NAME=value")
        return entries

    @staticmethod
    def absolute(path: str, where: str) -> str:
        if not path.startswith("/") or "\x00" in path or ".." in path.split("/"):
            raise CdiSpecError(f"{where}: {path!r} must be an absolute path without '..'")
        return path

    def device_node(self, value: Any, where: str) -> DeviceNodeEdit:
        known = ("path", "hostPath", "type", "major", "minor", "fileMode", "permissions")
        data = self.mapping(value, where, (*known, "uid", "gid"))
        path = self.absolute(self.string(data.get("path", ""), f"{where}.path"), f"{where}.path")
        host_path = self.string(data.get("hostPath") or "", f"{where}.hostPath")
        if host_path:
            self.absolute(host_path, f"{where}.hostPath")
            self.require("0.5.0", f"{where}.hostPath")
        kind = self.string(data.get("type") or "", f"{where}.type")
        if kind not in ("", "b", "c", "u", "p"):
            raise CdiSpecError(f"{where}.type: {kind!r} is not b, c, u or p")
        permissions = self.string(data.get("permissions") or "", f"{where}.permissions")
        if permissions != NO_PERMISSIONS and set(permissions) - set("rwm"):
            raise CdiSpecError(f"{where}.permissions: {permissions!r} is not some of 'rwm'")

        def optional(key: str, high: int) -> int | None:
            raw = data.get(key)
            return None if raw is None else self.integer(raw, f"{where}.{key}", 0, high)

        file_mode = optional("fileMode", 0o7777)
        return DeviceNodeEdit(
            path=path,
            host_path=host_path,
            type=kind,
            major=self.integer(data.get("major") or 0, f"{where}.major", 0, (1 << 32) - 1),
            minor=self.integer(data.get("minor") or 0, f"{where}.minor", 0, (1 << 32) - 1),
            file_mode=file_mode,
            permissions=permissions,
            uid=optional("uid", (1 << 32) - 2),
            gid=optional("gid", (1 << 32) - 2),
        )

    def mount(self, value: Any, where: str) -> MountEdit:
        data = self.mapping(value, where, ("hostPath", "containerPath", "options", "type"))
        host_path = self.string(data.get("hostPath", ""), f"{where}.hostPath")
        if not host_path:
            raise CdiSpecError(f"{where}.hostPath: empty")
        container_path = self.absolute(
            self.string(data.get("containerPath", ""), f"{where}.containerPath"),
            f"{where}.containerPath",
        )
        kind = self.string(data.get("type") or "", f"{where}.type")
        if kind:
            self.require("0.4.0", f"{where}.type")
        return MountEdit(
            host_path=host_path,
            container_path=container_path,
            options=self.strings(data.get("options"), f"{where}.options"),
            type=kind,
        )

    def hook(self, value: Any, where: str) -> HookEdit:
        data = self.mapping(value, where, ("hookName", "path", "args", "env", "timeout"))
        name = self.string(data.get("hookName", ""), f"{where}.hookName")
        if name not in HOOK_NAMES:
            raise CdiSpecError(f"{where}.hookName: {name!r} is not one of {', '.join(HOOK_NAMES)}")
        path = self.string(data.get("path", ""), f"{where}.path")
        if not path:
            raise CdiSpecError(f"{where}.path: empty")
        timeout = data.get("timeout")
        return HookEdit(
            hook_name=name,
            path=path,
            args=self.strings(data.get("args"), f"{where}.args"),
            env=self.env(data.get("env"), f"{where}.env"),
            timeout=None if timeout is None else self.integer(timeout, f"{where}.timeout", 1),
        )

    def edits(self, value: Any, where: str) -> ContainerEdits:
        if value is None:
            return ContainerEdits()
        known = ("env", "deviceNodes", "mounts", "hooks", "additionalGids", "intelRdt")
        data = self.mapping(value, where, (*known, "netDevices"))
        unsupported = []
        rdt = data.get("intelRdt")
        if rdt is not None:
            rdt_keys = ("closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring")
            rdt_data = self.mapping(rdt, f"{where}.intelRdt", rdt_keys)
            self.require("0.7.0", f"{where}.intelRdt")
            if "schemata" in rdt_data or rdt_data.get("enableMonitoring"):
                self.require("1.1.0", f"{where}.intelRdt.schemata/enableMonitoring")
            unsupported.append("intelRdt")
        net = self.items(data.get("netDevices"), f"{where}.netDevices")
        for i, device in enumerate(net):
            net_where = f"{where}.netDevices[{i}]"
            net_data = self.mapping(device, net_where, ("hostInterfaceName", "name"))
            if not net_data.get("hostInterfaceName") or not net_data.get("name"):
                raise CdiSpecError(f"{net_where}: needs hostInterfaceName and name")
        if net:
            self.require("1.1.0", f"{where}.netDevices")
            unsupported.append("netDevices")
        gids = tuple(
            self.integer(g, f"{where}.additionalGids[{i}]")
            for i, g in enumerate(self.items(data.get("additionalGids"), f"{where}.additionalGids"))
        )
        if gids:
            self.require("0.7.0", f"{where}.additionalGids")
        return ContainerEdits(
            env=self.env(data.get("env"), f"{where}.env"),
            device_nodes=tuple(
                self.device_node(d, f"{where}.deviceNodes[{i}]")
                for i, d in enumerate(self.items(data.get("deviceNodes"), f"{where}.deviceNodes"))
            ),
            mounts=tuple(
                self.mount(m, f"{where}.mounts[{i}]")
                for i, m in enumerate(self.items(data.get("mounts"), f"{where}.mounts"))
            ),
            hooks=tuple(
                self.hook(h, f"{where}.hooks[{i}]")
                for i, h in enumerate(self.items(data.get("hooks"), f"{where}.hooks"))
            ),
            additional_gids=gids,
            unsupported=tuple(unsupported),
        )


def load_document(text: bytes, path: str) -> Any:
    """A spec file's data: JSON for `.json`, YAML (a superset) otherwise."""
    if len(text) > MAX_SPEC_BYTES:
        raise CdiSpecError(f"larger than {MAX_SPEC_BYTES} bytes")
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise CdiSpecError(
            f"not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
            + str(e).replace("\n", " ")
        ) from None


def parse_spec(data: Any, path: str) -> CdiSpec:
    """The checked spec of a file's data (`path` is only named in the result)."""
    reader = _Reader()
    top = reader.mapping(
        data, "spec", ("cdiVersion", "kind", "annotations", "devices", "containerEdits")
    )
    version = reader.string(top.get("cdiVersion", ""), "cdiVersion")
    if version.startswith("v"):
        version = version[1:]
    if version not in VERSIONS:
        raise CdiSpecError(
            f"cdiVersion {version!r} is not one cri-py reads ({VERSIONS[0]} to {VERSIONS[-1]})"
        )
    kind = reader.string(top.get("kind", ""), "kind")
    try:
        vendor, device_class = parse_kind(kind)
    except CdiNameError as e:
        raise CdiSpecError(f"kind: {e}") from None
    if "." in device_class:
        reader.require("0.6.0", f"kind {kind!r} (a '.' in the class)")
    reader.annotations(top.get("annotations"), "annotations")
    edits = reader.edits(top.get("containerEdits"), "containerEdits")
    devices: dict[str, ContainerEdits] = {}
    raw_devices = reader.items(top.get("devices"), "devices")
    for i, raw in enumerate(raw_devices):
        where = f"devices[{i}]"
        device = reader.mapping(raw, where, ("name", "annotations", "containerEdits"))
        name = reader.string(device.get("name", ""), f"{where}.name")
        try:
            check_device_name(name)
        except CdiNameError as e:
            raise CdiSpecError(f"{where}.name: {e}") from None
        if name[0].isdigit():
            reader.require("0.5.0", f"{where}.name {name!r} (starts with a digit)")
        if name in devices:
            raise CdiSpecError(f"{where}: device {name!r} defined twice")
        reader.annotations(device.get("annotations"), f"{where}.annotations")
        device_edits = reader.edits(device.get("containerEdits"), f"{where}.containerEdits")
        if device_edits.is_empty():
            raise CdiSpecError(f"{where}: device {name!r} has no container edits")
        devices[name] = device_edits
    if not devices:
        raise CdiSpecError("no devices")
    if _version_key(reader.needs) > _version_key(version):
        raise CdiSpecError(
            f"{reader.needs_why} needs cdiVersion {reader.needs} or later, the file says {version}"
        )
    return CdiSpec(
        path=path,
        version=version,
        vendor=vendor,
        device_class=device_class,
        edits=edits,
        devices=devices,
    )
