"""The lab's Docker (e2e/docker.sh) and the kind e2e (e2e/kind_e2e.sh): what they generate and
read, checked without starting anything."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

TOP = Path(__file__).resolve().parents[3]
DOCKER_SH = TOP / "e2e" / "docker.sh"
CLUSTER = TOP / "kind-config" / "cluster.yaml"


def generated(name: str) -> str:
    done = subprocess.run(
        [str(DOCKER_SH), "config", name], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_dockerd_has_its_own_socket_roots_and_the_wrapper_as_default_runtime() -> None:
    daemon: dict[str, Any] = json.loads(generated("daemon.json"))
    assert daemon["hosts"] == ["unix:///run/cri-py-docker/docker.sock"]
    assert daemon["data-root"] == "/var/lib/cri-py-lab/docker"
    assert daemon["exec-root"] == "/run/cri-py-docker/exec"
    assert daemon["pidfile"].startswith("/run/cri-py-docker/")
    # Its own containerd, never the one on /run/containerd/containerd.sock.
    assert daemon["containerd"] == "/run/cri-py-docker/containerd/containerd.sock"
    runtime = daemon["default-runtime"]
    assert daemon["runtimes"][runtime]["path"] == "/var/lib/cri-py-lab/docker-lab/runc-wrapper"
    assert runtime not in ("runc", "io.containerd.runc.v2")


def test_dockerd_leaves_the_hosts_firewall_and_forwarding_alone() -> None:
    daemon = json.loads(generated("daemon.json"))
    assert daemon["iptables"] is False
    assert daemon["ip-forward"] is False
    assert daemon["ip-masq"] is False
    assert daemon["userland-proxy"] is True  # published ports (kind's API server) need it
    assert daemon["cgroup-parent"] == "/cri-py-lab-docker"


def test_containerd_config_keeps_to_the_lab_paths() -> None:
    toml = generated("containerd.toml")
    assert 'address = "/run/cri-py-docker/containerd/containerd.sock"' in toml
    assert 'root = "/var/lib/cri-py-lab/docker/containerd"' in toml
    assert 'state = "/run/cri-py-docker/containerd"' in toml
    assert '"io.containerd.grpc.v1.cri"' in toml  # in disabled_plugins: no CRI here


def test_the_kind_network_registry_is_read_only_on_the_gateway() -> None:
    config = yaml.safe_load(generated("registry.yml"))
    assert config["http"]["addr"] == "172.29.0.1:5000"
    assert config["storage"]["filesystem"]["rootdirectory"] == (
        "/var/lib/cri-py-lab/registry/storage"
    )
    maintenance = config["storage"]["maintenance"]
    assert maintenance["readonly"]["enabled"] is True
    assert maintenance["uploadpurging"]["enabled"] is False
    assert "delete" not in config["storage"]


def test_an_unknown_config_name_is_refused() -> None:
    done = subprocess.run(
        [str(DOCKER_SH), "config", "nope"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "usage" in done.stderr


def test_the_cluster_is_one_control_plane_node_and_two_workers_on_one_image() -> None:
    nodes = yaml.safe_load(CLUSTER.read_text())["nodes"]
    assert [node["role"] for node in nodes] == ["control-plane", "worker", "worker"]
    assert {node["image"] for node in nodes} == {"cri-py/kind-node:v1.37.2"}


def kind_e2e_sed(variable: str) -> list[str]:
    """What the sed expression e2e/kind_e2e.sh assigns to `variable` reads from cluster.yaml."""
    script = (TOP / "e2e" / "kind_e2e.sh").read_text()
    line = next(ln for ln in script.splitlines() if ln.startswith(f"{variable}=$(sed"))
    expression = line.split("sed -n '", 1)[1].split("'", 1)[0]
    done = subprocess.run(
        ["sed", "-n", expression, str(CLUSTER)], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_kind_e2e_reads_the_node_image_from_the_cluster_config() -> None:
    assert sorted(set(kind_e2e_sed("node_image"))) == ["cri-py/kind-node:v1.37.2"]


def test_kind_e2e_reads_the_cgroup_driver_kubelet_is_given() -> None:
    patches = [
        yaml.safe_load(p) for p in yaml.safe_load(CLUSTER.read_text())["kubeadmConfigPatches"]
    ]
    kubelet = next(p for p in patches if p["kind"] == "KubeletConfiguration")
    assert kind_e2e_sed("cgroup_driver") == [kubelet["cgroupDriver"]]
