"""The spec's `linux.resources.devices` as cgroup v1 `devices.deny` / `devices.allow` writes,
in order (a deny-all first resets the list the cgroup inherited). Pure and stdlib only.

cgroup v2 has no such files (a BPF program does the job there); the caller skips it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cri_py.oci.cgroups import Write

CONTROLLER = "devices"


def _number(value: Any) -> str:
    return "*" if value is None or int(value) < 0 else str(int(value))


def v1_device_rule(rule: Mapping[str, Any]) -> str:
    """One rule in the kernel's syntax: `c 1:3 rwm`, `a` for every device."""
    kind = str(rule.get("type") or "a")
    if kind not in ("a", "b", "c"):
        raise ValueError(f"device rule type {kind!r} is not a, b or c")
    access = str(rule.get("access") or "rwm")
    if not access or set(access) - set("rwm"):
        raise ValueError(f"device rule access {access!r} is not some of 'rwm'")
    if kind == "a":
        return f"a *:* {access}"
    return f"{kind} {_number(rule.get('major'))}:{_number(rule.get('minor'))} {access}"


def v1_device_writes(rules: Sequence[Mapping[str, Any]]) -> list[Write]:
    return [
        Write(
            CONTROLLER,
            "devices.allow" if rule.get("allow") else "devices.deny",
            v1_device_rule(rule),
        )
        for rule in rules
    ]
