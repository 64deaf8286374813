"""NRI container adjustments applied to the OCI spec the runtime built from the CRI request, and
NRI resources turned into the runtime's own. Pure: spec dicts and messages in, values out.

Plugins are asked in index order; each one's adjustment is applied to the spec the next one
is shown. A field (or, for maps and lists, an entry: an annotation key, a mount destination,
an env name, a device path, an rlimit type, a huge page size, a unified key) belongs to the
first plugin that sets it: another plugin setting it too is a conflict and fails the
container, as NRI's owner rules say. A key or path prefixed with "-" removes that entry.

The spec's mounts, devices and `linux.resources` are then performed by the same code as the
CRI's own (the shim's rootfs-by-descriptor mounts, the cgroup writes planned from
`linux.resources`). What cri-py cannot perform is refused, naming the field, rather than
written into a spec nobody reads.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from cri_py.model.resources import Resources
from cri_py.nri import api_pb2 as api
from cri_py.oci.hooks import HookError, append_hooks, hook_from_spec
from cri_py.oci.seccomp import SeccompError, seccomp_filter

REMOVAL_MARKER = "-"


class AdjustmentError(Exception):
    """A plugin's adjustment cannot be applied: a conflict with another plugin, a bad value, or
    a field cri-py does not implement."""


def _has(message: Any, field: str) -> bool:
    """HasField for a field named at run time."""
    return bool(message.HasField(field))


def marked_for_removal(key: str) -> tuple[str, bool]:
    if key.startswith(REMOVAL_MARKER):
        return key[len(REMOVAL_MARKER) :], True
    return key, False


class Owners:
    """Which plugin set which field of one container (NRI's OwningPlugins)."""

    def __init__(self) -> None:
        self._owners: dict[tuple[str, str], str] = {}

    def claim(self, field: str, plugin: str, key: str = "") -> None:
        owner = self._owners.setdefault((field, key), plugin)
        if owner != plugin:
            what = f"{field} {key!r}" if key else field
            raise AdjustmentError(f"plugins {owner!r} and {plugin!r} both tried to set {what}")

    def owner(self, field: str, key: str = "") -> str | None:
        return self._owners.get((field, key))


def _check_path(kind: str, path: str) -> str:
    if not path.startswith("/") or ".." in path.split("/"):
        raise AdjustmentError(f"{kind} {path!r} must be an absolute path without '..'")
    return path


# --- the adjustment, field by field ---------------------------------------------------------


def apply_adjustment(
    spec: dict[str, Any],
    adjust: api.ContainerAdjustment,
    plugin: str,
    owners: Owners,
) -> None:
    """Applies one plugin's adjustment to `spec` (changed in place; the caller holds a copy)."""
    _refuse_unsupported(adjust)
    process = spec.setdefault("process", {})
    _annotations(spec, adjust, plugin, owners)
    _mounts(spec, adjust, plugin, owners)
    _env(process, adjust, plugin, owners)
    if adjust.args:
        args = list(adjust.args)
        if args[0] == "":
            args = args[1:]
        owners.claim("args", plugin)
        if not args:
            raise AdjustmentError(f"plugin {plugin!r} left the container without a command")
        process["args"] = args
    if adjust.HasField("hooks"):
        _hooks(spec, adjust.hooks, plugin)
    _rlimits(process, adjust, plugin, owners)
    if adjust.HasField("linux"):
        _linux(spec, adjust.linux, plugin, owners)


def _refuse_unsupported(adjust: api.ContainerAdjustment) -> None:
    unsupported = []
    if adjust.CDI_devices:
        unsupported.append("CDI devices")
    if adjust.HasField("linux"):
        linux = adjust.linux
        for name, label in (
            ("io_priority", "I/O priority"),
            ("scheduler", "scheduler"),
            ("rdt", "RDT"),
            ("memory_policy", "memory policy"),
        ):
            if _has(linux, name):
                unsupported.append(label)
        if linux.namespaces:
            unsupported.append("namespaces")
        if linux.sysctl:
            unsupported.append("sysctls")
        if linux.net_devices:
            unsupported.append("network devices")
        if linux.HasField("resources"):
            unsupported += _unsupported_resources(linux.resources)
    if unsupported:
        raise AdjustmentError("cri-py cannot apply NRI adjustments of " + ", ".join(unsupported))


def _unsupported_resources(r: api.LinuxResources) -> list[str]:
    found = []
    if r.HasField("memory"):
        for name in ("reservation", "kernel", "kernel_tcp", "swappiness", "disable_oom_killer"):
            if _has(r.memory, name):
                found.append(f"memory {name}")
    if r.HasField("cpu"):
        for name in ("realtime_runtime", "realtime_period"):
            if _has(r.cpu, name):
                found.append(f"cpu {name}")
    if r.HasField("blockio_class"):
        found.append("block I/O class")
    if r.HasField("rdt_class"):
        found.append("RDT class")
    if r.devices:
        found.append("device cgroup rules (add devices instead)")
    return found


def _annotations(
    spec: dict[str, Any], adjust: api.ContainerAdjustment, plugin: str, owners: Owners
) -> None:
    if not adjust.annotations:
        return
    annotations = spec.setdefault("annotations", {})
    for raw, value in sorted(adjust.annotations.items()):
        key, removal = marked_for_removal(raw)
        if removal:
            if key not in adjust.annotations:
                annotations.pop(key, None)
            continue
        owners.claim("annotation", plugin, key)
        annotations[key] = value


def _mounts(
    spec: dict[str, Any], adjust: api.ContainerAdjustment, plugin: str, owners: Owners
) -> None:
    if not adjust.mounts:
        return
    mounts: list[dict[str, Any]] = spec.setdefault("mounts", [])
    added = []
    for m in adjust.mounts:
        destination, removal = marked_for_removal(m.destination)
        destination = posixpath.normpath(_check_path("mount destination", destination))
        mounts[:] = [x for x in mounts if posixpath.normpath(x["destination"]) != destination]
        if removal:
            continue
        owners.claim("mount", plugin, destination)
        if not m.type and not m.source:
            raise AdjustmentError(f"mount at {destination} has neither a type nor a source")
        mount: dict[str, Any] = {"destination": destination, "type": m.type or "bind"}
        if m.source:
            mount["source"] = m.source
        if m.options:
            mount["options"] = list(m.options)
        if mount["type"] == "bind":
            _check_path("bind mount source", m.source)
        added.append(mount)
    # Parents before children: a plugin's mount lands after whatever holds its parent dir.
    mounts.extend(added)
    mounts.sort(key=lambda x: len([p for p in x["destination"].split("/") if p]))


def _env(
    process: dict[str, Any], adjust: api.ContainerAdjustment, plugin: str, owners: Owners
) -> None:
    if not adjust.env:
        return
    env: list[str] = process.setdefault("env", [])
    for kv in adjust.env:
        key, removal = marked_for_removal(kv.key)
        if not key or "=" in key:
            raise AdjustmentError(f"environment variable name {key!r} is not valid")
        env[:] = [e for e in env if e.split("=", 1)[0] != key]
        if removal:
            continue
        owners.claim("env", plugin, key)
        env.append(f"{key}={kv.value}")


_HOOK_KINDS = (
    ("prestart", "prestart"),
    ("create_runtime", "createRuntime"),
    ("create_container", "createContainer"),
    ("start_container", "startContainer"),
    ("poststart", "poststart"),
    ("poststop", "poststop"),
)


def _hooks(spec: dict[str, Any], hooks: api.Hooks, plugin: str) -> None:
    # Hooks are appended in plugin order, never owned (NRI's rule); the runtime runs them
    # (`cri_py.oci.hooks`), so a malformed one is refused here, naming the plugin.
    for field, key in _HOOK_KINDS:
        added = []
        for index, hook in enumerate(getattr(hooks, field)):
            entry: dict[str, Any] = {"path": hook.path}
            if hook.args:
                entry["args"] = list(hook.args)
            if hook.env:
                entry["env"] = list(hook.env)
            if hook.HasField("timeout"):
                entry["timeout"] = hook.timeout.value
            try:
                added.append(hook_from_spec(entry, f"{key}[{index}]"))
            except HookError as e:
                raise AdjustmentError(f"plugin {plugin!r}: OCI hook {e}") from None
        append_hooks(spec, key, added)


def _rlimits(
    process: dict[str, Any], adjust: api.ContainerAdjustment, plugin: str, owners: Owners
) -> None:
    if not adjust.rlimits:
        return
    rlimits: list[dict[str, Any]] = process.setdefault("rlimits", [])
    for r in adjust.rlimits:
        if not r.type.startswith("RLIMIT_"):
            raise AdjustmentError(f"rlimit type {r.type!r} is not an RLIMIT_* name")
        if r.soft > r.hard:
            raise AdjustmentError(f"{r.type}: soft limit {r.soft} above hard limit {r.hard}")
        owners.claim("rlimit", plugin, r.type)
        rlimits[:] = [x for x in rlimits if x.get("type") != r.type]
        rlimits.append({"type": r.type, "hard": r.hard, "soft": r.soft})


def _linux(
    spec: dict[str, Any], linux: api.LinuxContainerAdjustment, plugin: str, owners: Owners
) -> None:
    section = spec.setdefault("linux", {})
    if linux.devices:
        _devices(section, linux.devices, plugin, owners)
    if linux.HasField("resources"):
        if "resources" not in section:
            raise AdjustmentError("the container has no cgroup: its resources cannot be adjusted")
        apply_resources(section["resources"], linux.resources, _claimer(owners, plugin))
    if linux.cgroups_path:
        owners.claim("cgroups path", plugin)
        path = posixpath.normpath(_check_path("cgroups path", linux.cgroups_path))
        if "cgroupsPath" not in section:
            raise AdjustmentError("the container has no cgroup: its path cannot be adjusted")
        section["cgroupsPath"] = path
    if linux.HasField("oom_score_adj"):
        value = linux.oom_score_adj.value
        if not -1000 <= value <= 1000:
            raise AdjustmentError(f"oom_score_adj {value} is outside -1000..1000")
        owners.claim("oom score adj", plugin)
        spec.setdefault("process", {})["oomScoreAdj"] = value
    if linux.HasField("seccomp_policy"):
        owners.claim("seccomp policy", plugin)
        section["seccomp"] = seccomp_section(linux.seccomp_policy)


def _devices(section: dict[str, Any], devices: Any, plugin: str, owners: Owners) -> None:
    nodes: list[dict[str, Any]] = section.setdefault("devices", [])
    rules: list[dict[str, Any]] | None = section.get("resources", {}).get("devices")
    for d in devices:
        path, removal = marked_for_removal(d.path)
        path = _check_path("device path", path)
        gone = [n for n in nodes if n["path"] == path]
        nodes[:] = [n for n in nodes if n["path"] != path]
        if rules is not None:
            for node in gone:
                # Its allow rule goes with it (the exact one the node was granted).
                rule = {
                    "allow": True,
                    "type": node["type"],
                    "major": node["major"],
                    "minor": node["minor"],
                }
                rules[:] = [r for r in rules if {k: r.get(k) for k in rule} != rule]
        if removal:
            continue
        if d.type not in ("c", "b", "u", "p"):
            raise AdjustmentError(f"device {path}: type {d.type!r} is not one of c, b, u, p")
        owners.claim("device", plugin, path)
        node = {
            "path": path,
            "type": d.type,
            "major": d.major,
            "minor": d.minor,
            "fileMode": d.file_mode.value if d.HasField("file_mode") else 0o666,
            "uid": d.uid.value if d.HasField("uid") else 0,
            "gid": d.gid.value if d.HasField("gid") else 0,
        }
        nodes.append(node)
        if rules is not None and not any(r.get("allow") and "type" not in r for r in rules):
            # The node is usable only with its cgroup rule (a privileged container's
            # allow-all rule covers it already).
            rules.append(
                {"allow": True, "type": d.type, "major": d.major, "minor": d.minor, "access": "rwm"}
            )


# --- resources -------------------------------------------------------------------------------

Claim = Callable[[str, str], None]


def _claimer(owners: Owners, plugin: str) -> Claim:
    return lambda field, key: owners.claim(field, plugin, key)


def apply_resources(target: dict[str, Any], r: api.LinuxResources, claim: Claim) -> None:
    """Merges the set fields of NRI resources into a spec's `linux.resources` (OCI names)."""
    _refuse = _unsupported_resources(r)
    if _refuse:
        raise AdjustmentError("cri-py cannot apply NRI resources: " + ", ".join(_refuse))
    if r.HasField("memory"):
        memory = target.setdefault("memory", {})
        for field, key in (("limit", "limit"), ("swap", "swap")):
            if _has(r.memory, field):
                claim(f"memory {field}", "")
                memory[key] = getattr(r.memory, field).value
    if r.HasField("cpu"):
        cpu = target.setdefault("cpu", {})
        for field in ("shares", "quota", "period"):
            if _has(r.cpu, field):
                claim(f"cpu {field}", "")
                cpu[field] = getattr(r.cpu, field).value
        if r.cpu.cpus:
            claim("cpuset cpus", "")
            cpu["cpus"] = r.cpu.cpus
        if r.cpu.mems:
            claim("cpuset mems", "")
            cpu["mems"] = r.cpu.mems
    if r.HasField("pids"):
        claim("pids limit", "")
        target["pids"] = {"limit": r.pids.limit}
    if r.hugepage_limits:
        limits: list[dict[str, Any]] = target.setdefault("hugepageLimits", [])
        for h in r.hugepage_limits:
            claim("hugepage limit", h.page_size)
            limits[:] = [x for x in limits if x.get("pageSize") != h.page_size]
            limits.append({"pageSize": h.page_size, "limit": h.limit})
    if r.unified:
        unified = target.setdefault("unified", {})
        for key, value in sorted(r.unified.items()):
            claim("unified", key)
            unified[key] = value


def spec_resources(r: api.LinuxResources) -> dict[str, Any]:
    """NRI resources as a spec's `linux.resources` (OCI names)."""
    target: dict[str, Any] = {}
    apply_resources(target, r, lambda field, key: None)
    return target


def model_resources(r: api.LinuxResources) -> Resources:
    """NRI resources as the CRI-shaped values UpdateContainerResources takes (unset: 0)."""
    refused = _unsupported_resources(r)
    if r.HasField("pids"):
        refused.append("pids limit (fixed at create)")
    if refused:
        raise AdjustmentError("cri-py cannot update " + ", ".join(refused))
    memory, cpu = r.memory, r.cpu
    return Resources(
        cpu_shares=cpu.shares.value if cpu.HasField("shares") else 0,
        cpu_quota=cpu.quota.value if cpu.HasField("quota") else 0,
        cpu_period=cpu.period.value if cpu.HasField("period") else 0,
        memory_limit_in_bytes=memory.limit.value if memory.HasField("limit") else 0,
        memory_swap_limit_in_bytes=memory.swap.value if memory.HasField("swap") else 0,
        cpuset_cpus=cpu.cpus,
        cpuset_mems=cpu.mems,
        hugepage_limits={h.page_size: h.limit for h in r.hugepage_limits},
        unified=dict(r.unified),
    )


def nri_resources(resources: Any) -> api.LinuxResources:
    """A spec's `linux.resources` (OCI names) as NRI shows them to plugins."""
    out = api.LinuxResources()
    if not isinstance(resources, dict):
        return out
    memory = resources.get("memory") or {}
    if "limit" in memory:
        out.memory.limit.value = int(memory["limit"])
    if "swap" in memory:
        out.memory.swap.value = int(memory["swap"])
    cpu = resources.get("cpu") or {}
    for field in ("shares", "quota", "period"):
        if field in cpu:
            getattr(out.cpu, field).value = int(cpu[field])
    out.cpu.cpus = str(cpu.get("cpus", ""))
    out.cpu.mems = str(cpu.get("mems", ""))
    for entry in resources.get("hugepageLimits") or ():
        out.hugepage_limits.add(page_size=str(entry["pageSize"]), limit=int(entry["limit"]))
    for key, value in (resources.get("unified") or {}).items():
        out.unified[key] = str(value)
    if "pids" in resources:
        out.pids.limit = int(resources["pids"].get("limit", 0))
    for rule in resources.get("devices") or ():
        device = out.devices.add(allow=bool(rule.get("allow")), access=str(rule.get("access", "")))
        device.type = str(rule.get("type", "a"))
        if "major" in rule:
            device.major.value = int(rule["major"])
        if "minor" in rule:
            device.minor.value = int(rule["minor"])
    return out


def resources_from_model(r: Resources) -> api.LinuxResources:
    """CRI-shaped values (0: unset) as NRI resources."""
    out = api.LinuxResources()
    if r.memory_limit_in_bytes:
        out.memory.limit.value = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes:
        out.memory.swap.value = r.memory_swap_limit_in_bytes
    if r.cpu_shares:
        out.cpu.shares.value = r.cpu_shares
    if r.cpu_quota:
        out.cpu.quota.value = r.cpu_quota
    if r.cpu_period:
        out.cpu.period.value = r.cpu_period
    out.cpu.cpus = r.cpuset_cpus
    out.cpu.mems = r.cpuset_mems
    for size, limit in sorted(r.hugepage_limits.items()):
        out.hugepage_limits.add(page_size=size, limit=limit)
    out.unified.update(r.unified)
    return out


# --- seccomp ---------------------------------------------------------------------------------


def seccomp_section(policy: api.LinuxSeccomp) -> dict[str, Any]:
    """An NRI seccomp policy as the spec's `linux.seccomp` (what the launcher loads)."""
    if policy.flags:
        raise AdjustmentError(f"cri-py cannot apply seccomp flags {list(policy.flags)}")
    if policy.listener_path or policy.listener_metadata:
        raise AdjustmentError("cri-py cannot hand seccomp notifications to a listener")
    if not policy.default_action:
        raise AdjustmentError("a seccomp policy needs a default action")
    section: dict[str, Any] = {"defaultAction": policy.default_action}
    if policy.HasField("default_errno"):
        section["defaultErrnoRet"] = policy.default_errno.value
    if policy.architectures:
        section["architectures"] = list(policy.architectures)
    syscalls = []
    for s in policy.syscalls:
        rule: dict[str, Any] = {"names": list(s.names), "action": s.action}
        if s.HasField("errno_ret"):
            rule["errnoRet"] = s.errno_ret.value
        if s.args:
            rule["args"] = [
                {"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op}
                for a in s.args
            ]
        syscalls.append(rule)
    section["syscalls"] = syscalls
    try:
        seccomp_filter(section)  # what the launcher will compile: refused now, not at start
    except SeccompError as e:
        raise AdjustmentError(f"seccomp policy: {e}") from None
    return section
