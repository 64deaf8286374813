from __future__ import annotations

import pytest

from cri_py.config import Config, RuntimeHandlerConfig, parse_layers
from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.linux import features
from cri_py.model.container import (
    ContainerConfig,
    ContainerMetadata,
    Mount,
    ProfileType,
    SecurityProfile,
)
from cri_py.runtime.handlers import RuntimeHandlers, check_pod, container_config
from cri_py.spec.security import seccomp_profile


def handlers(**runtimes: dict[str, object]) -> RuntimeHandlers:
    return RuntimeHandlers(parse_layers([("test", {"runtimes": runtimes})]))


def config(**fields: object) -> ContainerConfig:
    return ContainerConfig(metadata=ContainerMetadata(name="c"), image="busybox", **fields)  # type: ignore[arg-type]


def test_the_default_handler_exists_unconfigured_and_comes_first() -> None:
    known = handlers(**{"test-handler": {}, "a-handler": {}})
    assert known.names() == ["", "a-handler", "test-handler"]
    assert known.get("") == RuntimeHandlerConfig()
    assert RuntimeHandlers(Config()).names() == [""]


def test_an_unknown_handler_is_refused_naming_the_configured_ones() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"runtime handler 'kata' is not configured \(configured: '', 'test-handler'\)",
    ):
        handlers(**{"test-handler": {}}).get("kata")


def test_a_pod_whose_handler_was_removed_gets_no_more_containers() -> None:
    with pytest.raises(
        FailedPrecondition, match="runs with runtime handler 'gone', which is no longer configured"
    ):
        handlers().of_pod("gone", "sb1")


def test_features_are_each_handlers_switch_and_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    known = handlers(strict={"user_namespaces": False, "recursive_read_only_mounts": False})
    monkeypatch.setattr(features, "recursive_read_only_mounts", lambda: True)
    monkeypatch.setattr(features, "user_namespaces_problem", lambda root: "")
    assert [
        (f.name, f.recursive_read_only_mounts, f.user_namespaces) for f in known.features()
    ] == [
        ("", True, True),
        ("strict", False, False),
    ]
    monkeypatch.setattr(features, "user_namespaces_problem", lambda root: "no idmapped mounts")
    assert [f.user_namespaces for f in known.features()] == [False, False]


def test_a_handler_without_user_namespaces_refuses_host_users_false() -> None:
    strict = RuntimeHandlerConfig(user_namespaces=False)
    check_pod(strict, "strict", user_namespace=False)
    with pytest.raises(
        FailedPrecondition, match="'strict' does not allow pods with their own user namespace"
    ):
        check_pod(strict, "strict", user_namespace=True)


def test_a_handler_without_recursive_read_only_refuses_such_mounts() -> None:
    mount = Mount("/data", "/srv", readonly=True, recursive_read_only=True)
    strict = RuntimeHandlerConfig(recursive_read_only_mounts=False)
    with pytest.raises(
        FailedPrecondition, match="mount /data: runtime handler 'strict' does not allow"
    ):
        container_config(strict, "strict", config(mounts=(mount,)))
    assert container_config(RuntimeHandlerConfig(), "", config(mounts=(mount,))).mounts == (mount,)


@pytest.mark.parametrize(
    ("default", "expected"),
    [
        ("", SecurityProfile(ProfileType.UNCONFINED)),
        ("unconfined", SecurityProfile(ProfileType.UNCONFINED)),
        ("runtime/default", SecurityProfile(ProfileType.RUNTIME_DEFAULT)),
        (
            "localhost/etc/profiles/p.json",
            SecurityProfile(ProfileType.LOCALHOST, "/etc/profiles/p.json"),
        ),
    ],
)
def test_the_handlers_seccomp_default_applies_when_the_request_sets_none(
    default: str, expected: SecurityProfile
) -> None:
    handler = RuntimeHandlerConfig(default_seccomp_profile=default)
    assert seccomp_profile(container_config(handler, "h", config())) == expected
    # A profile the request names wins, the deprecated path form too.
    unconfined = SecurityProfile(ProfileType.UNCONFINED)
    assert seccomp_profile(container_config(handler, "h", config(seccomp=unconfined))) == unconfined
    legacy = container_config(handler, "h", config(seccomp_profile_path="unconfined"))
    assert seccomp_profile(legacy) == unconfined
