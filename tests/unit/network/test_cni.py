"""CNI's pure half: config choice, plugin environment and stdin, results and errors."""

from __future__ import annotations

import json

import pytest

from cri_py.model.sandbox import PortMapping
from cri_py.network.cni import (
    CniConfigError,
    Invocation,
    NetworkConfigList,
    PodIdentity,
    choose_config,
    cni_args,
    parse_config,
    plugin_config,
    plugin_env,
    plugin_error,
    port_mappings,
    result_ips,
)

CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
CONF = {"cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": "cni1"}
POD = PodIdentity(namespace="default", name="web", uid="uid-1", sandbox_id="ab" * 32)


def text(value: object) -> str:
    return json.dumps(value)


def test_conflist_keeps_its_plugins_in_order() -> None:
    network = parse_config(text(CONFLIST), "/etc/cni/net.d/10-pod.conflist")
    assert (network.name, network.cni_version) == ("podnet", "1.0.0")
    assert network.plugin_types == ("bridge", "portmap")
    assert network.source == "/etc/cni/net.d/10-pod.conflist"


def test_conf_is_wrapped_as_a_one_plugin_list() -> None:
    network = parse_config(text(CONF))
    assert (network.name, network.cni_version) == ("single", "0.4.0")
    assert network.plugins == (CONF,)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        (text({**CONFLIST, "name": ""}), "no 'name'"),
        (text({k: v for k, v in CONFLIST.items() if k != "cniVersion"}), "no 'cniVersion'"),
        (text({**CONFLIST, "cniVersion": "9.9.9"}), "cniVersion '9.9.9' is not supported"),
        (text({**CONFLIST, "plugins": []}), "'plugins' must be a non-empty list"),
        (text({**CONFLIST, "plugins": [{"bridge": "x"}]}), "plugin 0 has no 'type'"),
        (text({**CONFLIST, "plugins": [{"type": "../../bin/sh"}]}), "not a plain executable"),
        (text({"cniVersion": "1.0.0", "name": "n"}), "the config has no 'type'"),
        (text({**CONF, "capabilities": []}), "'capabilities' is not a JSON object"),
    ],
)
def test_invalid_configs_say_why(document: str, reason: str) -> None:
    with pytest.raises(CniConfigError, match=reason):
        parse_config(document)


def test_first_valid_file_in_lexical_order_wins_and_invalid_ones_are_skipped() -> None:
    choice = choose_config(
        [
            ("/d/20-second.conflist", text({**CONFLIST, "name": "second"})),
            ("/d/10-broken.conflist", "{"),
            ("/d/15-first.conf", text({**CONF, "name": "first"})),
            ("/d/05-readme.txt", "not a config"),
            ("/d/00-empty.conflist", text({**CONFLIST, "plugins": []})),
        ]
    )
    assert choice.config is not None and choice.config.name == "first"
    assert choice.config.source == "/d/15-first.conf"
    assert [path for path, _ in choice.skipped] == ["/d/00-empty.conflist", "/d/10-broken.conflist"]
    assert "not valid JSON" in choice.skipped[1][1]


def test_no_valid_file_gives_no_config_with_the_reasons() -> None:
    choice = choose_config([("/d/a.json", "{}"), ("/d/.hidden.conf", text(CONF))])
    assert choice.config is None
    assert choice.skipped == (("/d/a.json", "no 'name'"),)


def test_cni_args_carry_the_pod_identity_as_kubelet_names_it() -> None:
    assert cni_args(POD) == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
        f"K8S_POD_INFRA_CONTAINER_ID={'ab' * 32};K8S_POD_UID=uid-1"
    )


def test_plugin_env_adds_the_cni_variables_to_the_base_environment() -> None:
    invocation = Invocation(container_id="c1", netns="/run/x/ns/net", pod=POD)
    env = plugin_env(
        "ADD", invocation, ["/opt/cni/bin", "/usr/lib/cni"], {"PATH": "/usr/bin", "CNI_IFNAME": "x"}
    )
    assert env == {
        "PATH": "/usr/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/x/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "CNI_ARGS": cni_args(POD),
    }


def test_plugin_stdin_has_name_version_and_previous_result() -> None:
    network = parse_config(text(CONFLIST))
    previous = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}]}
    config = plugin_config(network, network.plugins[0], {"portMappings": [{"hostPort": 1}]}, None)
    assert config == {**CONFLIST["plugins"][0], "name": "podnet", "cniVersion": "1.0.0"}  # type: ignore[dict-item]
    chained = plugin_config(network, network.plugins[1], {}, previous)
    assert chained["prevResult"] == previous and "runtimeConfig" not in chained


def test_runtime_config_goes_only_to_plugins_declaring_the_capability() -> None:
    network = parse_config(text(CONFLIST))
    capabilities = {"portMappings": [{"hostPort": 8080}], "bandwidth": {"rate": 1}}
    bridge = plugin_config(network, network.plugins[0], capabilities, None)
    portmap = plugin_config(network, network.plugins[1], capabilities, None)
    assert "runtimeConfig" not in bridge
    assert portmap["runtimeConfig"] == {"portMappings": [{"hostPort": 8080}]}


def test_port_mappings_lowercase_protocols_and_skip_unpublished_ports() -> None:
    mappings = port_mappings(
        [
            PortMapping(protocol=0, container_port=80, host_port=8080),
            PortMapping(protocol=1, container_port=53, host_port=5353, host_ip="127.0.0.1"),
            PortMapping(protocol=2, container_port=9, host_port=9999),
            PortMapping(protocol=0, container_port=443, host_port=0),
        ]
    )
    assert mappings == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        {"hostPort": 9999, "containerPort": 9, "protocol": "sctp"},
    ]


def test_result_ips_are_the_pods_with_ipv4_first() -> None:
    result = {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa"},
            {"name": "veth1", "mac": "bb"},
            {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"},
        ],
        "ips": [
            {"address": "fd00::5/64", "interface": 2},
            {"address": "10.98.0.5/24", "gateway": "10.98.0.1", "interface": 2},
            {"address": "10.98.0.1/24", "interface": 0},
        ],
    }
    assert result_ips(result) == ("10.98.0.5", "fd00::5")


def test_result_ips_without_interfaces_and_legacy_results() -> None:
    assert result_ips({"ips": [{"version": "4", "address": "10.0.0.2/8"}]}) == ("10.0.0.2",)
    assert result_ips({"ip4": {"ip": "10.0.0.3/8"}, "ip6": {"ip": "fd::3/64"}}) == (
        "10.0.0.3",
        "fd::3",
    )
    assert result_ips({}) == ()


def test_plugin_error_prefers_the_json_error() -> None:
    stdout = text({"cniVersion": "1.0.0", "code": 11, "msg": "busy", "details": "try later"})
    assert plugin_error("bridge", "ADD", stdout.encode(), b"noise", 1) == (
        "code 11: busy: try later"
    )
    assert plugin_error("bridge", "ADD", b"", b"panic: oops\n", 2) == "exit status 2: panic: oops"


def test_network_config_round_trips_through_its_document() -> None:
    network = parse_config(text(CONFLIST), "/x.conflist")
    again = parse_config(text(network.to_data()), network.source)
    assert again == network
    assert isinstance(again, NetworkConfigList)
