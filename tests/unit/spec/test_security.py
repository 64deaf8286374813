from __future__ import annotations

import pytest

from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.model.container import (
    ContainerConfig,
    ContainerMetadata,
    ProfileType,
    SecurityProfile,
)
from cri_py.spec.security import (
    check_mac,
    check_privileged,
    container_seccomp,
    seccomp_profile,
)

BASE = ContainerConfig(metadata=ContainerMetadata("c"), image="busybox")
LOCAL = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}


def _config(**changes: object) -> ContainerConfig:
    return ContainerConfig(**{**BASE.__dict__, **changes})  # type: ignore[arg-type]


def test_unset_profile_is_unconfined() -> None:
    assert seccomp_profile(BASE).type == ProfileType.UNCONFINED


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("runtime/default", SecurityProfile(ProfileType.RUNTIME_DEFAULT)),
        ("docker/default", SecurityProfile(ProfileType.RUNTIME_DEFAULT)),
        ("unconfined", SecurityProfile(ProfileType.UNCONFINED)),
        ("localhost//etc/p.json", SecurityProfile(ProfileType.LOCALHOST, "/etc/p.json")),
    ],
)
def test_deprecated_path_is_honoured_when_the_field_is_unset(
    path: str, expected: SecurityProfile
) -> None:
    assert seccomp_profile(_config(seccomp_profile_path=path)) == expected


def test_the_field_wins_over_the_deprecated_path() -> None:
    config = _config(
        seccomp=SecurityProfile(ProfileType.UNCONFINED), seccomp_profile_path="runtime/default"
    )
    assert seccomp_profile(config).type == ProfileType.UNCONFINED


@pytest.mark.parametrize("ref", ["relative.json", "/etc/../root/p.json", ""])
def test_localhost_needs_a_clean_absolute_path(ref: str) -> None:
    config = _config(seccomp=SecurityProfile(ProfileType.LOCALHOST, ref))
    with pytest.raises(InvalidArgument):
        seccomp_profile(config)


def test_privileged_and_unconfined_get_no_filter() -> None:
    default = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
    assert container_seccomp(default, True, ()) is None
    assert container_seccomp(SecurityProfile(ProfileType.UNCONFINED), False, ()) is None
    assert container_seccomp(default, False, ())["defaultAction"] == "SCMP_ACT_ERRNO"  # type: ignore[index]


def test_localhost_profile_is_used_as_read() -> None:
    profile = SecurityProfile(ProfileType.LOCALHOST, "/p.json")
    assert container_seccomp(profile, False, (), LOCAL) == LOCAL
    with pytest.raises(InvalidArgument, match="defaultAction"):
        container_seccomp(profile, False, (), {"syscalls": []})


def test_apparmor_accepts_only_no_profile() -> None:
    check_mac(_config(apparmor=SecurityProfile(ProfileType.UNCONFINED)))
    check_mac(_config(apparmor=SecurityProfile(ProfileType.RUNTIME_DEFAULT)))
    with pytest.raises(InvalidArgument, match="AppArmor"):
        check_mac(_config(apparmor=SecurityProfile(ProfileType.LOCALHOST, "k8s-nginx")))


def test_selinux_options_are_ignored_without_selinux_and_refused_with_it() -> None:
    # kubelet's ContainerLogPath spec sends type container_logreader_t on any host: a pod that
    # runs on containerd without SELinux must run here too (found by the node e2e suite).
    logreader = _config(selinux_options=("", "", "container_logreader_t", ""))
    check_mac(logreader)
    check_mac(logreader, selinux_enabled=False)
    with pytest.raises(InvalidArgument, match="enforces SELinux"):
        check_mac(logreader, selinux_enabled=True)


def test_privileged_container_needs_a_privileged_sandbox() -> None:
    check_privileged(_config(privileged=True), True, "c")
    check_privileged(BASE, False, "c")
    with pytest.raises(FailedPrecondition, match="privileged"):
        check_privileged(_config(privileged=True), False, "c")
