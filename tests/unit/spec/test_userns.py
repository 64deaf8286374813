"""User namespace rules: what RunPodSandbox and CreateContainer accept, and the OCI forms."""

from __future__ import annotations

import pytest

from cri_py.errors import InvalidArgument
from cri_py.model.container import Mount
from cri_py.model.sandbox import IDMapping, NamespaceMode, NamespaceOptions, UserNamespace
from cri_py.spec.userns import (
    linux_user_section,
    map_file,
    validate_container_user_namespace,
    validate_pod_user_namespace,
)

ROOT_RANGE = (IDMapping(0, 65536, 65536),)
POD_USERS = UserNamespace(NamespaceMode.POD, ROOT_RANGE, ROOT_RANGE)


def pod(user: UserNamespace, **modes: NamespaceMode) -> NamespaceOptions:
    return NamespaceOptions(user=user, **modes)  # type: ignore[arg-type]


def test_pod_users_with_one_mapping_of_root_are_accepted() -> None:
    validate_pod_user_namespace(pod(POD_USERS))
    validate_pod_user_namespace(pod(UserNamespace()))  # unset: the host's users


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (UserNamespace(NamespaceMode.POD, ROOT_RANGE * 2, ROOT_RANGE), "exactly one uid mapping"),
        (UserNamespace(NamespaceMode.POD, ROOT_RANGE, ()), "exactly one gid mapping, got 0"),
        (UserNamespace(NamespaceMode.POD), "exactly one uid mapping, got 0"),
        (
            UserNamespace(NamespaceMode.POD, (IDMapping(1, 65536, 10),), ROOT_RANGE),
            "must map container ID 0",
        ),
        (
            UserNamespace(NamespaceMode.POD, ROOT_RANGE, (IDMapping(0, 0, 10),)),
            "must not map to host ID 0",
        ),
        (
            UserNamespace(NamespaceMode.POD, (IDMapping(0, 65536, 0),), ROOT_RANGE),
            "length must be positive",
        ),
        (
            UserNamespace(NamespaceMode.POD, (IDMapping(0, 2**32 - 10, 10),), ROOT_RANGE),
            "exceeds the 32-bit ID range",
        ),
        (UserNamespace(NamespaceMode.CONTAINER), "must be POD or NODE, got CONTAINER"),
        (UserNamespace(NamespaceMode.TARGET), "must be POD or NODE, got TARGET"),
        (UserNamespace(NamespaceMode.NODE, ROOT_RANGE, ROOT_RANGE), "NODE takes no ID mappings"),
    ],
)
def test_invalid_pod_users_are_refused(user: UserNamespace, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_pod_user_namespace(pod(user))


@pytest.mark.parametrize("kind", ["network", "ipc", "pid"])
def test_pod_users_cannot_share_the_hosts_namespaces(kind: str) -> None:
    with pytest.raises(InvalidArgument, match="cannot use the host's"):
        validate_pod_user_namespace(pod(POD_USERS, **{kind: NamespaceMode.NODE}))


def test_container_repeats_or_inherits_its_pods_users_only() -> None:
    validate_container_user_namespace(None, POD_USERS)
    validate_container_user_namespace(POD_USERS, POD_USERS)
    with pytest.raises(InvalidArgument, match="differs from its pod's"):
        validate_container_user_namespace(UserNamespace(), POD_USERS)
    with pytest.raises(InvalidArgument, match="CONTAINER is not supported"):
        validate_container_user_namespace(UserNamespace(NamespaceMode.CONTAINER), POD_USERS)


def test_idmapped_mounts_need_the_pods_own_mappings() -> None:
    same = Mount("/data", "/srv", uid_mappings=ROOT_RANGE, gid_mappings=ROOT_RANGE)
    validate_container_user_namespace(None, POD_USERS, [same, Mount("/plain", "/srv")])
    other = Mount("/data", "/srv", uid_mappings=(IDMapping(0, 1, 5),), gid_mappings=ROOT_RANGE)
    with pytest.raises(InvalidArgument, match="other than the pod's"):
        validate_container_user_namespace(None, POD_USERS, [other])
    with pytest.raises(InvalidArgument, match="need a pod with its own user namespace"):
        validate_container_user_namespace(None, UserNamespace(), [same])


def test_map_file_and_oci_section() -> None:
    assert map_file(ROOT_RANGE) == "0 65536 65536\n"
    section = linux_user_section(POD_USERS)
    assert section["uidMappings"] == [{"containerID": 0, "hostID": 65536, "size": 65536}]
    assert section["gidMappings"] == section["uidMappings"]
    assert linux_user_section(UserNamespace()) == {}
