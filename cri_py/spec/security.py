"""The spec's security sections that are not capabilities: which seccomp profile (RuntimeDefault,
Localhost, Unconfined; the deprecated `seccomp_profile_path`), AppArmor and SELinux (not
applied: a named AppArmor profile is refused, SELinux options are ignored where the host has no
SELinux), and the privileged-container rule.

Reading a Localhost profile file is the container service's; this module says which file.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.model.container import ContainerConfig, ProfileType, SecurityProfile
from cri_py.spec.seccomp_default import default_profile

# The deprecated string forms (kubelet's seccomp annotations' values).
_LEGACY_DEFAULTS = ("runtime/default", "docker/default")
_LEGACY_UNCONFINED = ("unconfined", "")
_LEGACY_LOCALHOST = "localhost/"


def seccomp_profile(config: ContainerConfig) -> SecurityProfile:
    """The profile asked for: the `seccomp` field, else the deprecated path, else Unconfined
    (CRI: "nil means unconfined"). A Localhost reference must be an absolute, clean path."""
    if config.seccomp is not None:
        profile = config.seccomp
    else:
        path = config.seccomp_profile_path
        if path in _LEGACY_DEFAULTS:
            profile = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
        elif path in _LEGACY_UNCONFINED:
            profile = SecurityProfile(ProfileType.UNCONFINED)
        elif path.startswith(_LEGACY_LOCALHOST):
            profile = SecurityProfile(ProfileType.LOCALHOST, path.removeprefix(_LEGACY_LOCALHOST))
        else:
            raise InvalidArgument(f"unknown seccomp profile path {path!r}")
    if profile.type == ProfileType.LOCALHOST:
        ref = profile.localhost_ref
        if not ref.startswith("/") or os.path.normpath(ref) != ref:
            raise InvalidArgument(
                f"seccomp localhost profile {ref!r} must be an absolute path without '..'"
            )
    return profile


def container_seccomp(
    profile: SecurityProfile,
    privileged: bool,
    capabilities: Collection[str],
    localhost: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The spec's `linux.seccomp` (None: no filter). Privileged containers get none, whatever
    was asked (containerd and CRI-O agree; critest checks a blocking profile is ignored).
    `localhost` is the parsed file of a Localhost profile."""
    if privileged or profile.type == ProfileType.UNCONFINED:
        return None
    if profile.type == ProfileType.RUNTIME_DEFAULT:
        return default_profile(capabilities)
    if localhost is None:
        raise InvalidArgument(f"seccomp profile {profile.localhost_ref} was not read")
    if not isinstance(localhost.get("defaultAction"), str):
        raise InvalidArgument(
            f"seccomp profile {profile.localhost_ref}: no defaultAction (not an OCI/Docker "
            "seccomp profile?)"
        )
    return dict(localhost)


def check_mac(config: ContainerConfig, selinux_enabled: bool = False) -> None:
    """AppArmor and SELinux, neither of which cri-py applies. AppArmor: "nothing",
    RuntimeDefault and Unconfined are accepted, a named profile is refused rather than silently
    not applied (kubelet checks a node's AppArmor support before it asks). SELinux options are
    ignored on a host without SELinux, as containerd and CRI-O do (kubelet sets them, e.g.
    container_logreader_t, whatever the host), and refused on one that enforces it."""
    apparmor = config.apparmor
    # RuntimeDefault means "the runtime's default", which here is none.
    if apparmor is not None and apparmor.type == ProfileType.LOCALHOST:
        raise InvalidArgument(
            f"AppArmor profile {apparmor.localhost_ref!r} requested, but AppArmor is not "
            "supported by this runtime"
        )
    if config.apparmor_profile not in ("", "unconfined", "runtime/default"):
        raise InvalidArgument(
            f"AppArmor profile {config.apparmor_profile!r} requested, but AppArmor is not "
            "supported by this runtime"
        )
    if config.selinux_options and selinux_enabled:
        raise InvalidArgument(
            f"SELinux options {list(config.selinux_options)} requested on a host that enforces "
            "SELinux, but this runtime cannot apply SELinux labels"
        )


def check_privileged(config: ContainerConfig, sandbox_privileged: bool, name: str) -> None:
    """A privileged container needs a privileged sandbox (kubelet's rule too: the pod's
    security context allows it, or no container of it may ask)."""
    if config.privileged and not sandbox_privileged:
        raise FailedPrecondition(
            f"container {name} asks to be privileged, but its pod sandbox is not privileged"
        )
