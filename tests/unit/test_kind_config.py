"""kind-config/ checked without Docker: the cluster config and its kubeadm/kubelet patches say
what kind v0.33 and kubeadm v1beta4 accept and point at cri-py's socket with the cgroup driver
the node's cri-py uses; the node image recipe copies files the build context has and installs
no containerd; the base's entrypoint prints what kind waits for; the units pass systemd."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cri_py.config import Config, load

TOP = Path(__file__).resolve().parents[2]
KIND = TOP / "kind-config"
SOCKET_URL = f"unix://{Config().socket}"
BUILD_NODE = TOP / "e2e" / "kind" / "build-node.sh"
BUILD_BASE = TOP / "e2e" / "kind" / "build-base.sh"

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


def shell_default(script: Path, name: str) -> str:
    """The default a build script gives NAME (`NAME=${NAME:-default}`)."""
    found = re.search(rf"^{name}=\$\{{{name}:?-([^}}]*)\}}$", script.read_text(), re.M)
    assert found, f"{script.name} sets no default for {name}"
    return found.group(1)


def test_every_node_uses_the_image_make_kind_image_builds() -> None:
    version = shell_default(BUILD_NODE, "KUBERNETES_VERSION")
    tag = shell_default(BUILD_NODE, "NODE_TAG").replace("$KUBERNETES_VERSION", version)
    makefile = (TOP / "Makefile").read_text()
    assert re.search(rf"^KUBERNETES_VERSION \?= {re.escape(version)}$", makefile, re.M)
    assert tag == f"cri-py/kind-node:{version}"
    for node in cluster()["nodes"]:
        assert node["image"] == tag
    # One control-plane node and two workers: `make e2e-kind` spreads a Deployment over workers.
    assert [node["role"] for node in cluster()["nodes"]] == ["control-plane", "worker", "worker"]


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


def node_config() -> Config:
    """cri-py's config on a node: the image's config.yaml with no drop-in."""
    return load(KIND / "node" / "etc" / "cri-py" / "config.yaml", KIND / "nonexistent")


def test_kubelet_patch_uses_the_cgroup_driver_of_the_nodes_cri_py() -> None:
    patch = patches()["KubeletConfiguration"]
    assert patch["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    assert set(patch) <= KUBELET_FIELDS_USED
    # kubelet also asks cri-py (RuntimeConfig, which answers the configured driver): the node
    # config names the driver explicitly, and the two agree.
    assert node_config().cgroups.driver == patch["cgroupDriver"] == "systemd"
    assert patch["containerRuntimeEndpoint"] == SOCKET_URL
    assert patch["failCgroupV1"] is False


def test_node_config_waits_for_the_clusters_cni() -> None:
    config = node_config()
    # No built-in bridge: pods wait for kindnet's conflist, in kind's dirs.
    assert config.network.builtin is False
    assert config.network.cni_conf_dir == "/etc/cni/net.d"
    assert config.network.cni_bin_dirs == ("/opt/cni/bin",)
    assert config.socket == Config().socket


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


def test_dockerfile_builds_on_our_base_by_default() -> None:
    instructions = dockerfile_instructions()
    args = dict(value.split("=", 1) for op, value in instructions if op == "ARG" and "=" in value)
    assert instructions[0][0] == "ARG"
    assert [value for op, value in instructions if op == "FROM"] == ["${BASE_IMAGE}"]
    assert args["BASE_IMAGE"] == "cri-py/kind-base:bookworm"
    assert args["KUBE_VERSION"] == shell_default(BUILD_NODE, "KUBERNETES_VERSION")
    assert shell_default(BUILD_BASE, "BASE_TAG") == args["BASE_IMAGE"]


def context_source(source: str) -> Path | None:
    """Where a path of build-node.sh's build context comes from in the checkout (None: built)."""
    top, _, rest = source.partition("/")
    if top == "kind-config":
        return KIND / rest
    if top == "cri-py":
        return TOP / rest
    if top == "manifests":
        return KIND / "manifests" / rest
    return None


def test_dockerfile_copies_what_the_build_context_holds() -> None:
    script = BUILD_NODE.read_text()
    binaries = re.search(r"^for b in ([a-z ]+); do$", script, re.M)
    assert binaries, "build-node.sh copies no binaries"
    built = set(binaries.group(1).split())
    copies = [shlex.split(value) for op, value in dockerfile_instructions() if op == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for source in sources:
            if source.startswith("bin/"):
                assert source.removeprefix("bin/") in built, source
            elif source == "wheels/":
                assert '"$ctx/wheels"' in script
            else:
                path = context_source(source.rstrip("/"))
                assert path is not None and path.exists(), f"COPY source {source} not in context"
    # The context holds the sources install.sh installs, and both manifests kind applies.
    assert "pyproject.toml README.md cri_py systemd" in script
    assert (KIND / "manifests" / "default-cni.yaml").exists()
    assert (KIND / "manifests" / "default-storage.yaml").exists()


def test_dockerfile_installs_cri_py_with_its_unit_and_no_containerd() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(value for op, value in instructions if op == "RUN")
    # The unit installed is systemd/cri-py.service, through the install script it ships with.
    # With the `ctr` and `containerd` stand-ins `kind load` runs on a node.
    assert re.search(r"CTR_STAND_IN=1\s+/src/cri-py/systemd/install\.sh install", runs)
    assert (TOP / "systemd" / "install.sh").exists()
    assert "systemctl enable cri-py.service kubelet.service" in runs
    assert "systemctl mask containerd.service" in runs
    assert "/kind/version" in runs
    packages = re.search(r"^PACKAGES=\(\n(.*?)^\)", BUILD_BASE.read_text(), re.M | re.S)
    assert packages
    assert "containerd" not in packages.group(1)
    assert {"systemd", "dbus", "python3-venv", "containernetworking-plugins"} <= set(
        packages.group(1).split()
    )


def test_base_image_config_is_kinds() -> None:
    script = BUILD_BASE.read_text()
    # systemd's halt signal, systemd told it runs in a container, the entrypoint before init.
    assert "'STOPSIGNAL SIGRTMIN+3'" in script
    assert "'ENV container=docker'" in script
    assert """'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]'""" in script


def test_entrypoint_parses_and_logs_what_kind_waits_for() -> None:
    entrypoint = KIND / "base" / "usr" / "local" / "bin" / "entrypoint"
    assert entrypoint.stat().st_mode & 0o111
    check = subprocess.run(["bash", "-n", str(entrypoint)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # kind v0.33 waits for this regexp in the node's log before its first `docker exec`
    # (pkg/cluster/internal/providers/common/cgroups.go): on v1 hosts our entrypoint's line.
    kind_waits_for = re.compile("Reached target .*Multi-User System.*|detected cgroup v1")
    said = re.findall(r'^\s*say "([^"$]*)"$', entrypoint.read_text(), re.M)
    assert any(kind_waits_for.search(line) for line in said), said
    assert 'exec "$@"' in entrypoint.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # cri-py's unit as install.sh renders it, and the image's kubelet unit with its drop-ins,
    # slice and the base's unit, with the programs they run moved under tmp_path (verify
    # wants an executable at every Exec path).
    (tmp_path / "bin").mkdir()
    for name in ("cri-py", "kubelet"):
        exe = tmp_path / "bin" / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    shutil.copytree(KIND / "base" / "kind" / "bin", tmp_path / "kind" / "bin")
    shutil.copytree(KIND / "node" / "kind" / "bin", tmp_path / "kind" / "bin", dirs_exist_ok=True)

    def install(source: Path, name: str) -> Path:
        text = source.read_text().replace("@PREFIX@", str(tmp_path))
        text = text.replace("/usr/bin/kubelet", f"{tmp_path}/bin/kubelet")
        text = text.replace("/kind/bin/", f"{tmp_path}/kind/bin/")
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
        return tmp_path / name

    units = KIND / "node" / "etc" / "systemd" / "system"
    base_units = KIND / "base" / "etc" / "systemd" / "system"
    paths = [
        install(TOP / "systemd" / "cri-py.service", "cri-py.service"),
        install(units / "kubelet.service", "kubelet.service"),
        install(units / "kubelet.slice", "kubelet.slice"),
        install(base_units / "kind-undo-mounts.service", "kind-undo-mounts.service"),
    ]
    drop_ins = sorted((units / "kubelet.service.d").glob("*.conf"))
    assert [p.name for p in drop_ins] == ["10-kubeadm.conf", "11-kind.conf", "20-cri-py.conf"]
    for drop_in in drop_ins:
        install(drop_in, f"kubelet.service.d/{drop_in.name}")
    verify = subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert verify.returncode == 0, verify.stderr
    for path in [*paths, *(tmp_path / "kubelet.service.d").iterdir()]:
        assert str(path) not in verify.stderr, verify.stderr
