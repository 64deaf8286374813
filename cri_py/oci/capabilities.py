"""Capabilities at launch: the kernel's numbering, and what a process keeps of the spec's sets
once its user is known. Pure and stdlib only (the shim imports it); the launcher applies the
result with prctl/capset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# <linux/capability.h>, by number: the name order is the bit order.
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAPABILITY_NUMBERS = {name: number for number, name in enumerate(ALL_CAPABILITIES)}

CAP_SYS_ADMIN = CAPABILITY_NUMBERS["CAP_SYS_ADMIN"]


class CapabilityError(ValueError):
    """The spec names a capability this runtime does not know."""


def capability_numbers(names: Iterable[str]) -> frozenset[int]:
    numbers = set()
    for name in names:
        if name not in CAPABILITY_NUMBERS:
            raise CapabilityError(f"unknown capability {name!r}")
        numbers.add(CAPABILITY_NUMBERS[name])
    return frozenset(numbers)


@dataclass(frozen=True)
class CapabilitySets:
    """A process's capability sets, as bit numbers."""

    bounding: frozenset[int] = frozenset()
    effective: frozenset[int] = frozenset()
    permitted: frozenset[int] = frozenset()
    inheritable: frozenset[int] = frozenset()
    ambient: frozenset[int] = frozenset()

    @classmethod
    def from_spec(cls, data: Mapping[str, Sequence[str]]) -> CapabilitySets:
        return cls(
            bounding=capability_numbers(data.get("bounding", ())),
            effective=capability_numbers(data.get("effective", ())),
            permitted=capability_numbers(data.get("permitted", ())),
            inheritable=capability_numbers(data.get("inheritable", ())),
            ambient=capability_numbers(data.get("ambient", ())),
        )


def sets_for_user(caps: CapabilitySets, uid: int) -> CapabilitySets:
    """What the process holds when it execs. Root keeps the spec's sets. Any other user gets
    only its ambient capabilities in effective, as execve(2) computes anyway for a file without
    capabilities (Kubernetes: a non-root container has no effective capabilities unless they
    are ambient), but keeps the spec's permitted set up to execve, as runc does: execve derives
    the new sets from the file's capabilities and the ambient and bounding sets, and under
    no_new_privs grants a file capability only if it was permitted before. So a program with
    `setcap cap_net_bind_service+ep` (CoreDNS's image) run as non-root with that capability
    added and allowPrivilegeEscalation false (kubeadm's CoreDNS Deployment) can bind port 53."""
    if uid == 0:
        return caps
    ambient = caps.ambient & caps.bounding
    return CapabilitySets(
        bounding=caps.bounding,
        effective=ambient,
        permitted=(caps.permitted & caps.bounding) | ambient,
        inheritable=caps.inheritable & ambient,
        ambient=ambient,
    )


def before_exec(caps: CapabilitySets, keep: Iterable[int], held: Iterable[int]) -> CapabilitySets:
    """The sets to capset until execve: `caps`, plus `keep` (CAP_SYS_ADMIN, which loading a
    seccomp filter needs without no_new_privs) and limited to what this process `held`
    (capset cannot raise beyond it: e.g. no CAP_SYS_RESOURCE here). What `keep` adds does not
    survive execve: the kernel derives the new permitted and effective sets from the bounding,
    inheritable and ambient sets and the file's capabilities only."""
    have = frozenset(held)
    extra = frozenset(keep) & have
    return CapabilitySets(
        bounding=caps.bounding & have,
        effective=(caps.effective | extra) & have,
        permitted=(caps.permitted | extra) & have,
        inheritable=caps.inheritable & have,
        ambient=caps.ambient & have,
    )
