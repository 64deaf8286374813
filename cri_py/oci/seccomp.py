"""The spec's `linux.seccomp` (OCI runtime-spec format, which Docker's profile files also follow)
as a rule list libseccomp can compile: action numbers, comparison operators, one rule per
syscall name. Pure and stdlib only (the shim imports it); `cri_py.shim.launcher` loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EPERM = 1

# <seccomp.h> action values.
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_ACT_TRACE = 0x7FF00000

# <seccomp.h> enum scmp_compare.
COMPARE_OPERATORS: Mapping[str, int] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# OCI architecture names -> libseccomp's (seccomp_arch_resolve_name).
ARCHITECTURES: Mapping[str, str] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_RISCV64": "riscv64",
}


class SeccompError(ValueError):
    """The profile is not one we can load; the message says which part."""


@dataclass(frozen=True)
class ArgCondition:
    index: int
    op: int
    value: int
    value_two: int = 0


@dataclass(frozen=True)
class SeccompRule:
    syscall: str
    action: int
    # All must hold (libseccomp ANDs a rule's conditions).
    conditions: tuple[ArgCondition, ...] = ()


@dataclass(frozen=True)
class SeccompFilter:
    default_action: int
    # libseccomp names; the native one is always included.
    architectures: tuple[str, ...]
    rules: tuple[SeccompRule, ...]


def action_number(name: str, errno_ret: int | None) -> int:
    """An OCI action name (SCMP_ACT_ERRNO ...) as libseccomp's number; ERRNO and TRACE carry
    `errno_ret` (EPERM when unset, as runc does)."""
    code = EPERM if errno_ret is None else errno_ret
    if name == "SCMP_ACT_ERRNO":
        return _SCMP_ACT_ERRNO | (code & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return _SCMP_ACT_TRACE | (code & 0xFFFF)
    fixed = {
        "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW,
        "SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD,
        "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS,
        "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
        "SCMP_ACT_LOG": SCMP_ACT_LOG,
    }
    if name not in fixed:
        raise SeccompError(f"unsupported seccomp action {name!r}")
    return fixed[name]


def _condition(data: Mapping[str, Any]) -> ArgCondition:
    op = str(data.get("op", ""))
    if op not in COMPARE_OPERATORS:
        raise SeccompError(f"unknown seccomp comparison {op!r}")
    index = int(data.get("index", 0))
    if not 0 <= index <= 5:
        raise SeccompError(f"seccomp argument index {index} is out of range 0..5")
    return ArgCondition(
        index=index,
        op=COMPARE_OPERATORS[op],
        value=int(data.get("value", 0)),
        value_two=int(data.get("valueTwo", 0)),
    )


def _errno_ret(data: Mapping[str, Any]) -> int | None:
    value = data.get("errnoRet")
    return None if value is None else int(value)


def seccomp_filter(section: Mapping[str, Any]) -> SeccompFilter:
    """The spec's `linux.seccomp` as a filter. Rules whose action is the default one are left
    out (libseccomp refuses them). Conditions on distinct arguments make one rule (all must
    hold); several on the same argument make one rule each (any may hold), as runc reads
    them."""
    default = action_number(
        str(section.get("defaultAction", "")),
        _errno_ret({"errnoRet": section.get("defaultErrnoRet")}),
    )
    architectures = []
    for arch in section.get("architectures") or ():
        if arch not in ARCHITECTURES:
            raise SeccompError(f"unknown seccomp architecture {arch!r}")
        architectures.append(ARCHITECTURES[arch])
    rules: list[SeccompRule] = []
    for entry in section.get("syscalls") or ():
        names = list(entry.get("names") or ())
        if entry.get("name"):  # Docker's older single-name form
            names.append(str(entry["name"]))
        action = action_number(str(entry.get("action", "")), _errno_ret(entry))
        if action == default:
            continue
        conditions = tuple(_condition(arg) for arg in entry.get("args") or ())
        indexes = [c.index for c in conditions]
        if len(set(indexes)) == len(indexes):
            groups: list[tuple[ArgCondition, ...]] = [conditions]
        else:
            groups = [(c,) for c in conditions]
        for name in names:
            for group in groups:
                rules.append(SeccompRule(str(name), action, group))
    return SeccompFilter(default, tuple(architectures), tuple(rules))
