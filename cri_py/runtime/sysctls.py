"""Which kernel namespace a sysctl belongs to, and whether a pod may set it (pure).

Only namespaced sysctls can be set per pod; the list follows runc's validation (the kernel's
own split): IPC ones, `fs.mqueue.*`, `net.*`, and the UTS names. A pod that shares the host's
namespace of that kind cannot set it either: it would change the node.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cri_py.errors import InvalidArgument
from cri_py.model.sandbox import NamespaceMode, NamespaceOptions

_IPC_NAMES = frozenset(
    {
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
    }
)
_UTS_NAMES = frozenset({"kernel.hostname", "kernel.domainname"})
# Letters, digits, `_`, `-`, and `.` or `/` as separators; no empty component, so no `..`.
_NAME = re.compile(r"^[A-Za-z0-9_-]+([./][A-Za-z0-9_-]+)*$")


def normalize(name: str) -> str:
    """`net/ipv4/ip_forward` -> `net.ipv4.ip_forward` (sysctl(8) accepts both spellings)."""
    if "/" in name and "." not in name.split("/")[0]:
        return ".".join(p.replace(".", "/") for p in name.split("/"))
    return name


def namespace_of(name: str) -> str | None:
    """ "ipc", "net" or "uts" for a namespaced sysctl; None for a node-wide one."""
    name = normalize(name)
    if name in _IPC_NAMES or name.startswith("fs.mqueue."):
        return "ipc"
    if name.startswith("net."):
        return "net"
    if name in _UTS_NAMES:
        return "uts"
    return None


def validate_sysctls(sysctls: Mapping[str, str], namespaces: NamespaceOptions) -> None:
    """Raises InvalidArgument naming the first sysctl the pod may not set."""
    for name, value in sysctls.items():
        if not _NAME.fullmatch(name):  # fullmatch: `$` would let a trailing newline in
            raise InvalidArgument(f"sysctl {name!r}: not a valid sysctl name")
        if "\n" in value or "\x00" in value:
            raise InvalidArgument(f"sysctl {name}: value must be a single line")
        kind = namespace_of(name)
        if kind is None:
            raise InvalidArgument(
                f"sysctl {name} is not namespaced: setting it for a pod would change the node"
            )
        shared = {
            "net": namespaces.network == NamespaceMode.NODE,
            "ipc": namespaces.ipc == NamespaceMode.NODE,
            "uts": namespaces.network == NamespaceMode.NODE,
        }[kind]
        if shared:
            raise InvalidArgument(
                f"sysctl {name} needs the pod's own {kind} namespace, but the pod shares the host's"
            )
