"""kind-config/ checked without Docker: the cluster config and its kubeadm/kubelet patches say
what kind v0.33 and kubeadm v1beta4 accept and point at cri-py's socket with the cgroup driver
cri-py implements; the node image recipe copies files that exist; the units pass systemd."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cri_py.config import Config

TOP = Path(__file__).resolve().parents[2]
KIND = TOP / "kind-config"
SOCKET_URL = f"unix://{Config().socket}"

# Fields of kubeadm.k8s.io/v1beta4 and kubelet.config.k8s.io/v1beta1 the patches may use: a
# misspelt key would be dropped by kind's merge or rejected by kubeadm's strict decoding.
NODE_REGISTRATION_FIELDS = {
    "name",
    "criSocket",
    "taints",
    "kubeletExtraArgs",
    "ignorePreflightErrors",
    "imagePullPolicy",
    "imagePullSerial",
}
INIT_FIELDS = {
    "apiVersion",
    "kind",
    "bootstrapTokens",
    "dryRun",
    "nodeRegistration",
    "localAPIEndpoint",
    "certificateKey",
    "skipPhases",
    "patches",
    "timeouts",
}
JOIN_FIELDS = {
    "apiVersion",
    "kind",
    "dryRun",
    "nodeRegistration",
    "caCertPath",
    "discovery",
    "controlPlane",
    "skipPhases",
    "patches",
    "timeouts",
}
KUBELET_FIELDS_USED = {
    "apiVersion",
    "kind",
    "cgroupDriver",
    "failCgroupV1",
    "containerRuntimeEndpoint",
}


def cluster() -> dict[str, Any]:
    data = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert isinstance(data, dict)
    return data


def patches() -> dict[str, dict[str, Any]]:
    """The kubeadm config patches by kind; each must be a YAML mapping of its own."""
    by_kind: dict[str, dict[str, Any]] = {}
    for text in cluster()["kubeadmConfigPatches"]:
        patch = yaml.safe_load(text)
        assert isinstance(patch, dict), text
        assert patch["kind"] not in by_kind, f"two patches for {patch['kind']}"
        by_kind[patch["kind"]] = patch
    return by_kind


def test_cluster_config_is_a_kind_v1alpha4_cluster() -> None:
    data = cluster()
    assert data["kind"] == "Cluster"
    assert data["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in data["nodes"]]
    assert roles[0] == "control-plane"
    assert set(roles) <= {"control-plane", "worker"}


def test_every_node_uses_the_image_the_readme_builds() -> None:
    readme = (KIND / "README.md").read_text()
    build = re.search(r"docker build -f kind-config/Dockerfile -t (\S+) \.", readme)
    assert build, "README.md shows no docker build command"
    for node in cluster()["nodes"]:
        assert node["image"] == build.group(1)


@pytest.mark.parametrize(
    ("kind", "fields"), [("InitConfiguration", INIT_FIELDS), ("JoinConfiguration", JOIN_FIELDS)]
)
def test_kubeadm_patches_point_cri_socket_at_cri_py(kind: str, fields: set[str]) -> None:
    patch = patches()[kind]
    # kind >= v0.33 generates v1beta4 for Kubernetes >= 1.36 and applies a versioned patch only
    # to a document of that exact version.
    assert patch["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert set(patch) <= fields
    registration = patch["nodeRegistration"]
    assert set(registration) <= NODE_REGISTRATION_FIELDS
    assert registration["criSocket"] == SOCKET_URL


def test_kubelet_patch_uses_the_cgroup_driver_cri_py_reports() -> None:
    patch = patches()["KubeletConfiguration"]
    assert patch["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    assert set(patch) <= KUBELET_FIELDS_USED
    # cri-py answers the CRI RuntimeConfig call with CGROUPFS (kubelet asks it for the driver
    # when KubeletCgroupDriverFromCRI is on); the configured one must agree.
    runtime = (TOP / "cri_py" / "server" / "runtime.py").read_text()
    assert "cgroup_driver=pb.CgroupDriver.CGROUPFS" in runtime
    assert patch["cgroupDriver"] == "cgroupfs"
    assert patch["containerRuntimeEndpoint"] == SOCKET_URL
    assert patch["failCgroupV1"] is False


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (KIND / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_on_a_pinned_kind_node_image() -> None:
    instructions = dockerfile_instructions()
    args = dict(value.split("=", 1) for op, value in instructions if op == "ARG" and "=" in value)
    assert instructions[0][0] == "ARG"
    assert [value for op, value in instructions if op == "FROM"] == ["${KIND_NODE_IMAGE}"]
    assert re.fullmatch(r"kindest/node:v1\.37\.\d+@sha256:[0-9a-f]{64}", args["KIND_NODE_IMAGE"])


def test_dockerfile_copies_files_that_exist_and_installs_the_repo_unit() -> None:
    instructions = dockerfile_instructions()
    copies = [shlex.split(value) for op, value in instructions if op == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for source in sources:
            assert (TOP / source).exists(), f"COPY source {source} missing from the repository"
    runs = " ".join(value for op, value in instructions if op == "RUN")
    # The unit installed is systemd/cri-py.service, through the install script it ships with.
    assert "/src/cri-py/systemd/install.sh install" in runs
    assert any(sources == ["systemd"] for *sources, _ in copies)
    assert (TOP / "systemd" / "install.sh").exists()
    assert "multi-user.target.wants/cri-py.service" in runs
    assert "ln -sf /dev/null /etc/systemd/system/containerd.service" in runs


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # The unit as install.sh renders it (an executable must stand at ExecStart), and kubelet
    # with the image's drop-in, which verify reads from kubelet.service.d next to the unit.
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "cri-py"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "cri-py.service"
    unit.write_text(
        (TOP / "systemd" / "cri-py.service").read_text().replace("@PREFIX@", str(tmp_path))
    )
    kubelet = tmp_path / "kubelet.service"
    kubelet.write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "kubelet.service.d").mkdir()
    drop_in = tmp_path / "kubelet.service.d" / "20-cri-py.conf"
    shutil.copy(KIND / "kubelet-cri-py.conf", drop_in)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit), str(kubelet)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert verify.returncode == 0, verify.stderr
    assert str(drop_in) not in verify.stderr, verify.stderr
    assert str(unit) not in verify.stderr, verify.stderr
