"""The spec's `process.capabilities`: the default set, the CRI's add / drop (names with or
without `CAP_`, and "ALL"), ambient capabilities and privileged containers.

What a non-root user keeps of these sets is decided at launch (`cri_py.oci.plan`), where the
user is known; the spec lists the sets as root would get them, as containerd's does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from cri_py.errors import InvalidArgument
from cri_py.oci.capabilities import ALL_CAPABILITIES, CAPABILITY_NUMBERS

# The set Docker and containerd give every container (moby's and containerd's default spec):
# enough for a classic root-in-a-box (chown, setuid to a service user, bind port 80, ping),
# nothing that reaches the host kernel's shared state (no SYS_ADMIN, NET_ADMIN, SYS_MODULE...).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


def capability_name(name: str) -> str:
    """`net_admin`, `NET_ADMIN` and `CAP_NET_ADMIN` all name CAP_NET_ADMIN."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full not in CAPABILITY_NUMBERS:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


def is_all(name: str) -> bool:
    """True for "ALL" (or "CAP_ALL") in an add or drop list: every capability."""
    return name.strip().upper() in ("ALL", "CAP_ALL")


def _ordered(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=CAPABILITY_NUMBERS.__getitem__)


def container_capabilities(
    add: Sequence[str],
    drop: Sequence[str],
    ambient: Sequence[str] = (),
    privileged: bool = False,
    defaults: Sequence[str] = DEFAULT_CAPABILITIES,
) -> dict[str, Any]:
    """The OCI `process.capabilities` sets. containerd's order: "ALL" in add (every
    capability) and "ALL" in drop (none) apply first, so that individual names still work
    after them (add ALL + drop CHOWN = everything but CHOWN); then the adds, then the drops.
    Inheritable stays empty (CVE-2022-29162: a non-empty one leaks into file capabilities);
    ambient capabilities must also be permitted and inheritable to exist, so they are added
    to every set."""
    if privileged:
        caps = set(ALL_CAPABILITIES)
    else:
        # `defaults`: the runtime handler's starting set (DEFAULT_CAPABILITIES unless set).
        caps = {capability_name(n) for n in defaults}
        if any(is_all(n) for n in add):
            caps = set(ALL_CAPABILITIES)
        if any(is_all(n) for n in drop):
            caps = set()
        caps |= {capability_name(n) for n in add if not is_all(n)}
        caps -= {capability_name(n) for n in drop if not is_all(n)}
    ambient_caps = {capability_name(n) for n in ambient}
    caps |= ambient_caps
    every = _ordered(caps)
    return {
        "bounding": every,
        "effective": every,
        "permitted": every,
        "inheritable": _ordered(ambient_caps),
        "ambient": _ordered(ambient_caps),
    }
