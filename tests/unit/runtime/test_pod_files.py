"""Contents of a pod's hostname, hosts and resolv.conf files."""

from __future__ import annotations

from cri_py.model.sandbox import DNSConfig
from cri_py.runtime.pod_files import hostname_file, hosts_file, pod_hostname, resolv_conf


def test_resolv_conf_comes_from_dns_config() -> None:
    dns = DNSConfig(
        servers=("10.96.0.10", "10.96.0.11"),
        searches=("default.svc.cluster.local", "svc.cluster.local"),
        options=("ndots:5", "timeout:1"),
    )
    assert resolv_conf(dns, "nameserver 1.1.1.1\n") == (
        "search default.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.96.0.10\n"
        "nameserver 10.96.0.11\n"
        "options ndots:5 timeout:1\n"
    )


def test_empty_dns_config_copies_the_hosts_resolv_conf() -> None:
    assert resolv_conf(DNSConfig(), "nameserver 192.0.2.53\n") == "nameserver 192.0.2.53\n"


def test_hosts_file_has_localhost_and_the_pod_ip() -> None:
    text = hosts_file("web-0", ("10.88.0.2",))
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert text.endswith("10.88.0.2\tweb-0\n")
    assert "web-0" not in hosts_file("web-0", ())


def test_hostname_rules() -> None:
    assert pod_hostname("web-0", "pod", host_network=False, node_hostname="node") == "web-0"
    assert pod_hostname("", "pod", host_network=False, node_hostname="node") == "pod"
    assert pod_hostname("web-0", "pod", host_network=True, node_hostname="node") == "node"
    assert len(pod_hostname("x" * 100, "pod", False, "node")) == 63
    assert hostname_file("web-0") == "web-0\n"
