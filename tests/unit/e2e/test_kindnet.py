"""The lab's kindnet stand-in (e2e/images/files/kindnet/kindnet.py): what it decides from the
API's nodes and the node's routes, and the files it writes. Its ip/iptables side effects run in
the image (`build_images.py --catalog e2e/images/kind-catalog.toml --smoke`)."""

import importlib.util
import ipaddress
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cri_py.network.cni import choose_config
from tests.unit.e2e.conftest import E2E_DIR


def load_kindnet() -> ModuleType:
    path = E2E_DIR / "images/files/kindnet/kindnet.py"
    spec = importlib.util.spec_from_file_location("kindnet", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kindnet"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kindnet = load_kindnet()
net = ipaddress.ip_network
ip = ipaddress.ip_address


def node_object(name: str, cidrs: list[str], addresses: dict[str, str]) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {"podCIDR": cidrs[0] if cidrs else "", "podCIDRs": cidrs},
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses.items()]},
    }


CONTROL = node_object("kind-control-plane", ["10.244.0.0/24"], {"InternalIP": "172.18.0.2"})
WORKER = node_object(
    "kind-worker",
    ["10.244.1.0/24", "fd00:10:244:1::/64"],
    {"InternalIP": "172.18.0.3", "Hostname": "kind-worker"},
)


def test_a_node_is_its_pod_cidrs_and_internal_ips() -> None:
    node = kindnet.parse_node(WORKER)

    assert node.name == "kind-worker"
    assert node.pod_cidrs == (net("10.244.1.0/24"), net("fd00:10:244:1::/64"))
    assert node.internal_ips == (ip("172.18.0.3"),)


def test_malformed_node_fields_are_left_out() -> None:
    node = kindnet.parse_node(
        {
            "metadata": {"name": "n"},
            "spec": {"podCIDRs": ["10.244.1.1/24", "bogus"]},  # host bits set: not a network
            "status": {"addresses": [{"type": "InternalIP", "address": "not-an-ip"}]},
        }
    )

    assert (node.pod_cidrs, node.internal_ips) == ((), ())


def test_old_single_pod_cidr_field_is_enough() -> None:
    node = kindnet.parse_node({"metadata": {"name": "n"}, "spec": {"podCIDR": "10.244.2.0/24"}})

    assert node.pod_cidrs == (net("10.244.2.0/24"),)


def test_routes_go_to_every_other_node_via_its_ip_of_the_same_family() -> None:
    nodes = [kindnet.parse_node(CONTROL), kindnet.parse_node(WORKER)]

    routes = kindnet.desired_routes("kind-control-plane", nodes)

    # The worker's IPv6 range has no IPv6 InternalIP to go through: no route for it.
    assert routes == {kindnet.Route(net("10.244.1.0/24"), ip("172.18.0.3"))}
    assert kindnet.desired_routes("kind-worker", nodes) == {
        kindnet.Route(net("10.244.0.0/24"), ip("172.18.0.2"))
    }


def test_a_node_without_pod_cidr_or_address_gets_no_route() -> None:
    nodes = [
        kindnet.parse_node(node_object("a", [], {"InternalIP": "172.18.0.4"})),
        kindnet.parse_node(node_object("b", ["10.244.3.0/24"], {})),
    ]

    assert kindnet.desired_routes("self", nodes) == set()


def test_route_plan_adds_missing_and_moved_routes_and_drops_ours_nobody_wants() -> None:
    Route = kindnet.Route
    desired = {
        Route(net("10.244.1.0/24"), ip("172.18.0.3")),
        Route(net("10.244.2.0/24"), ip("172.18.0.9")),  # the node got another address
    }
    current = {
        Route(net("10.244.1.0/24"), ip("172.18.0.3")),
        Route(net("10.244.2.0/24"), ip("172.18.0.4")),
        Route(net("10.244.5.0/24"), ip("172.18.0.6")),  # that node left the cluster
    }

    add, remove = kindnet.route_plan(desired, current)

    assert add == [Route(net("10.244.2.0/24"), ip("172.18.0.9"))]
    # `ip route replace` moves 10.244.2.0/24; only the departed node's route is deleted.
    assert remove == [Route(net("10.244.5.0/24"), ip("172.18.0.6"))]
    assert kindnet.route_plan(desired, desired) == ([], [])


def test_ip_json_routes_are_parsed_and_odd_entries_skipped() -> None:
    text = json.dumps(
        [
            {"dst": "10.244.1.0/24", "gateway": "172.18.0.3", "dev": "eth0", "protocol": "75"},
            {"dst": "default", "gateway": "172.18.0.1"},
            {"dst": "10.244.9.0/24", "dev": "eth0"},
        ]
    )

    assert kindnet.parse_ip_routes(text) == {kindnet.Route(net("10.244.1.0/24"), ip("172.18.0.3"))}
    assert kindnet.parse_ip_routes("") == set()


def test_cni_config_is_ptp_host_local_over_the_node_ranges_and_portmap() -> None:
    config = kindnet.cni_config([net("10.244.1.0/24"), net("fd00:10:244:1::/64")], 1500)

    ptp, portmap = config["plugins"]
    assert config["cniVersion"] == "1.0.0" and config["name"] == "kindnet"
    assert ptp["type"] == "ptp" and ptp["mtu"] == 1500 and ptp["ipMasq"] is False
    assert ptp["ipam"]["type"] == "host-local"
    assert ptp["ipam"]["ranges"] == [
        [{"subnet": "10.244.1.0/24"}],
        [{"subnet": "fd00:10:244:1::/64"}],
    ]
    assert ptp["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_cni_config_leaves_mtu_to_the_plugin_when_unknown_and_needs_a_range() -> None:
    assert "mtu" not in kindnet.cni_config([net("10.244.1.0/24")], 0)["plugins"][0]
    with pytest.raises(ValueError, match="podCIDR"):
        kindnet.cni_config([], 1500)


def test_cni_config_is_the_one_cri_py_picks_from_the_directory() -> None:
    text = kindnet.render_config(kindnet.cni_config([net("10.244.1.0/24")], 1500))

    choice = choose_config([(kindnet.CONF_NAME, text), ("99-other.conflist", "{}")])

    assert choice.config is not None and choice.config.name == "kindnet"
    assert [plugin["type"] for plugin in choice.config.plugins] == ["ptp", "portmap"]


def test_masquerade_rules_skip_pod_destinations_and_masquerade_the_rest() -> None:
    text = kindnet.masquerade_restore([net("10.244.0.0/16")])

    assert text.splitlines() == [
        "*nat",
        ":CRI-PY-KINDNET-MASQ - [0:0]",
        "-A CRI-PY-KINDNET-MASQ -d 10.244.0.0/16 -j RETURN",
        "-A CRI-PY-KINDNET-MASQ -s 10.244.0.0/16 -j MASQUERADE",
        "COMMIT",
    ]
    jump = kindnet.masquerade_jump()
    assert jump[0] == "POSTROUTING" and jump[-2:] == ["-j", "CRI-PY-KINDNET-MASQ"]
    assert jump[jump.index("--dst-type") - 1] == "!"


def test_pod_subnet_is_one_or_two_cidrs() -> None:
    assert kindnet.parse_subnets("10.244.0.0/16") == (net("10.244.0.0/16"),)
    assert kindnet.parse_subnets("10.244.0.0/16, fd00:10:244::/56") == (
        net("10.244.0.0/16"),
        net("fd00:10:244::/56"),
    )
    for bad in ("", "{{ .PodSubnet }}"):
        with pytest.raises(ValueError):
            kindnet.parse_subnets(bad)


def test_mtu_is_the_one_of_the_interface_holding_the_node_ip() -> None:
    links = json.dumps(
        [
            {"ifname": "lo", "mtu": 65536, "addr_info": [{"local": "127.0.0.1"}]},
            {"ifname": "eth0", "mtu": 1450, "addr_info": [{"local": "172.18.0.3"}]},
        ]
    )

    assert kindnet.interface_mtu(links, [ip("172.18.0.3")]) == 1450
    assert kindnet.interface_mtu(links, [ip("10.0.0.1")]) == 0


def test_api_endpoint_prefers_kinds_control_plane_endpoint() -> None:
    assert kindnet.api_endpoint({"CONTROL_PLANE_ENDPOINT": "kind-control-plane:6443"}) == (
        "kind-control-plane:6443"
    )
    service = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert kindnet.api_endpoint(service) == "10.96.0.1:443"
    assert kindnet.api_endpoint({"KUBERNETES_SERVICE_HOST": "fd00::1"}) == "[fd00::1]:443"
    with pytest.raises(ValueError):
        kindnet.api_endpoint({})


def test_config_is_written_atomically_and_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "net.d" / kindnet.CONF_NAME

    assert kindnet.write_if_changed(path, "one\n") is True
    inode = path.stat().st_ino
    assert kindnet.write_if_changed(path, "one\n") is False
    assert path.stat().st_ino == inode
    assert kindnet.write_if_changed(path, "two\n") is True
    assert path.read_text() == "two\n" and path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == [kindnet.CONF_NAME]


def test_main_refuses_to_start_without_its_node_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert kindnet.main({"POD_SUBNET": "10.244.0.0/16"}) == 2
    assert "NODE_NAME" in capsys.readouterr().err
