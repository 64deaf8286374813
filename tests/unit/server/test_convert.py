"""CRI messages to the runtime's types and back, for sandboxes."""

from __future__ import annotations

import json

import pytest

from cri_py.api import api_pb2 as pb
from cri_py.errors import InvalidArgument
from cri_py.model.sandbox import NamespaceMode, Phase, SandboxRecord, SandboxState, SandboxView
from cri_py.server import convert
from cri_py.store.codec import from_data, to_data


def pod_config() -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="web", uid="u1", namespace="default", attempt=3),
        hostname="web-0",
        dns_config=pb.DNSConfig(servers=["10.96.0.10"], searches=["svc"], options=["ndots:5"]),
        labels={"app": "web"},
        annotations={"a": "b"},
        linux=pb.LinuxPodSandboxConfig(
            sysctls={"net.core.somaxconn": "1"},
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER)
            ),
        ),
    )


def test_config_is_converted_field_by_field() -> None:
    config = convert.sandbox_config(pod_config())
    assert (config.metadata.name, config.metadata.attempt) == ("web", 3)
    assert config.dns.servers == ("10.96.0.10",)
    assert config.namespaces.network == NamespaceMode.NODE
    assert config.namespaces.pid == NamespaceMode.CONTAINER
    assert config.labels == {"app": "web"} and config.sysctls == {"net.core.somaxconn": "1"}


def test_unknown_namespace_mode_is_invalid_argument() -> None:
    request = pod_config()
    request.linux.security_context.namespace_options.ipc = 42  # type: ignore[assignment]
    with pytest.raises(InvalidArgument, match="unknown namespace mode 42"):
        convert.sandbox_config(request)


def test_status_echoes_labels_annotations_and_ip() -> None:
    record = SandboxRecord(
        "ab" * 32, convert.sandbox_config(pod_config()), 5, Phase.CREATED, ip="10.88.0.9"
    )
    status = convert.sandbox_status(SandboxView(record, SandboxState.READY))
    assert status.network.ip == "10.88.0.9"
    assert dict(status.labels) == {"app": "web"} and dict(status.annotations) == {"a": "b"}
    assert status.linux.namespaces.options.network == pb.NODE
    assert status.metadata.attempt == 3 and status.created_at == 5


def test_status_and_info_report_every_pod_ip_and_the_network_kind() -> None:
    record = SandboxRecord(
        "ab" * 32,
        convert.sandbox_config(pod_config()),
        5,
        Phase.CREATED,
        ip="10.98.0.4",
        additional_ips=("fd00::4",),
        network="cni",
    )
    view = SandboxView(record, SandboxState.READY)
    network = convert.sandbox_status(view).network
    assert network.ip == "10.98.0.4" and [p.ip for p in network.additional_ips] == ["fd00::4"]
    info = json.loads(convert.sandbox_info(view)["info"])
    assert info["network"] == {"kind": "cni", "ip": "10.98.0.4", "additionalIps": ["fd00::4"]}


def test_records_from_before_cni_load_as_builtin_network_pods() -> None:
    record = SandboxRecord("ab" * 32, convert.sandbox_config(pod_config()), 5, ip="10.88.0.9")
    old = {k: v for k, v in to_data(record).items() if k not in ("network", "additional_ips")}
    loaded = from_data(SandboxRecord, old)
    assert loaded.network == "builtin" and loaded.additional_ips == ()


def test_filter_conversion() -> None:
    request = pb.ListPodSandboxRequest(
        filter=pb.PodSandboxFilter(
            id="ab",
            state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY),
            label_selector={"app": "web"},
        )
    )
    selector = convert.sandbox_filter(request)
    assert (selector.id, selector.state, selector.labels) == (
        "ab",
        SandboxState.NOTREADY,
        {"app": "web"},
    )
    assert convert.sandbox_filter(pb.ListPodSandboxRequest()).state is None


def test_user_namespace_options_are_read_stored_and_reported() -> None:
    config = pod_config()
    mapping = pb.IDMapping(container_id=0, host_id=65536, length=65536)
    users = config.linux.security_context.namespace_options.userns_options
    users.mode = pb.POD
    users.uids.append(mapping)
    users.gids.append(mapping)
    converted = convert.sandbox_config(config)
    assert converted.namespaces.user.mode == NamespaceMode.POD
    assert [(m.container_id, m.host_id, m.length) for m in converted.namespaces.user.uids] == [
        (0, 65536, 65536)
    ]
    record = SandboxRecord(id="s" * 64, config=converted, created_at=1)
    assert from_data(SandboxRecord, json.loads(json.dumps(to_data(record)))) == record
    status = convert.sandbox_status(SandboxView(record, SandboxState.READY))
    reported = status.linux.namespaces.options.userns_options
    assert reported.mode == pb.POD and list(reported.gids) == [mapping]


def test_unset_user_namespace_options_mean_the_hosts_users() -> None:
    assert convert.sandbox_config(pod_config()).namespaces.user.mode == NamespaceMode.NODE
    record = SandboxRecord(id="s" * 64, config=convert.sandbox_config(pod_config()), created_at=1)
    status = convert.sandbox_status(SandboxView(record, SandboxState.READY))
    assert status.linux.namespaces.options.userns_options.mode == pb.NODE
