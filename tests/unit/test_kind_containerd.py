"""The containerd baseline kind node (kind-config/containerd/, kind-config/cluster-containerd.yaml,
`make kind-image RUNTIME=containerd`) checked without Docker: the cluster config names the image
build-node.sh builds for containerd and points kubeadm and kubelet at containerd's socket; the
cgroup driver is the same in kubelet's patch, containerd's config and kind's containerd patch;
containerd's config parses as TOML, also with the mirrors the image build appends; the
Dockerfile copies only what build-node.sh puts in its build context."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

TOP = Path(__file__).resolve().parents[2]
KIND = TOP / "kind-config"
CLUSTER = KIND / "cluster-containerd.yaml"
DOCKERFILE = KIND / "containerd" / "Dockerfile"
ROOTFS = KIND / "containerd" / "rootfs"
CONTAINERD_TOML = ROOTFS / "etc" / "containerd" / "config.toml"
BUILD_NODE = TOP / "e2e" / "kind" / "build-node.sh"
SOCKET_URL = "unix:///run/containerd/containerd.sock"
CRI = "io.containerd.grpc.v1.cri"


def cluster() -> dict[str, Any]:
    loaded = yaml.safe_load(CLUSTER.read_text())
    assert isinstance(loaded, dict)
    return loaded


def patches() -> dict[str, dict[str, Any]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for text in cluster()["kubeadmConfigPatches"]:
        patch = yaml.safe_load(text)
        by_kind[patch["kind"]] = patch
    return by_kind


def runc_options(config: dict[str, Any], runtime: str) -> dict[str, Any]:
    options = config["plugins"][CRI]["containerd"]["runtimes"][runtime]["options"]
    assert isinstance(options, dict)
    return options


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_node_uses_the_image_build_node_builds_for_containerd() -> None:
    script = BUILD_NODE.read_text()
    default = re.search(r"containerd\) NODE_TAG=\$\{NODE_TAG:-([^}]*)\} ;;", script)
    assert default is not None
    version = re.search(r"KUBERNETES_VERSION=\$\{KUBERNETES_VERSION:-([^}]*)\}", script)
    assert version is not None
    tag = default.group(1).replace("$KUBERNETES_VERSION", version.group(1))
    nodes = cluster()["nodes"]
    assert [node["role"] for node in nodes] == ["control-plane", "worker", "worker"]
    assert {node["image"] for node in nodes} == {tag}


def test_kubeadm_and_kubelet_use_containerds_socket() -> None:
    by_kind = patches()
    assert by_kind["InitConfiguration"]["nodeRegistration"]["criSocket"] == SOCKET_URL
    assert by_kind["JoinConfiguration"]["nodeRegistration"]["criSocket"] == SOCKET_URL
    assert by_kind["KubeletConfiguration"]["containerRuntimeEndpoint"] == SOCKET_URL
    crictl = yaml.safe_load((ROOTFS / "etc" / "crictl.yaml").read_text())
    assert crictl == {"runtime-endpoint": SOCKET_URL, "image-endpoint": SOCKET_URL}
    # kubelet is ordered after containerd, not after cri-py (whose drop-in the image removes).
    dropin = (ROOTFS / "etc/systemd/system/kubelet.service.d/20-containerd.conf").read_text()
    assert "After=containerd.service" in dropin
    assert "rm -rf /etc/cri-py /etc/systemd/system/kubelet.service.d/20-cri-py.conf" in (
        DOCKERFILE.read_text()
    )


def test_cgroup_driver_is_the_same_for_kubelet_and_containerd() -> None:
    driver = patches()["KubeletConfiguration"]["cgroupDriver"]
    assert driver in ("cgroupfs", "systemd")
    want = driver == "systemd"
    config = tomllib.loads(CONTAINERD_TOML.read_text())
    # kind merges containerdConfigPatches into the node's config.toml before kubeadm runs.
    patched = [tomllib.loads(text) for text in cluster()["containerdConfigPatches"]]
    for runtime in ("runc", "test-handler"):
        assert runc_options(config, runtime)["SystemdCgroup"] is want
        assert [runc_options(p, runtime)["SystemdCgroup"] for p in patched] == [want]


def test_containerd_config_is_the_baselines() -> None:
    config = tomllib.loads(CONTAINERD_TOML.read_text())
    assert config["version"] == 2
    cri = config["plugins"][CRI]
    # kubeadm v1.37's pause image, which the lab registry holds (e2e/images/catalog.toml).
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.2"
    assert '"registry.k8s.io/pause:3.10.2"' in (TOP / "e2e/images/catalog.toml").read_text()
    # The nodes lack CAP_SYS_RESOURCE: without it, no sandbox starts.
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"] == {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}
    assert runc_options(config, "runc")["BinaryName"] == "/usr/sbin/runc"


def test_mirrors_the_build_appends_parse_and_cover_the_labs_hosts(tmp_path: Path) -> None:
    """Run the Dockerfile's mirror step on a copy of config.toml, with the hosts build-node.sh
    reads from e2e/lab-config.yaml, and read the result as containerd would."""
    (step,) = [
        args for word, args in dockerfile_instructions() if word == "RUN" and "MIRROR" in args
    ]
    target = tmp_path / "config.toml"
    target.write_text(CONTAINERD_TOML.read_text())
    step = step.replace("/etc/containerd/config.toml", str(target))
    step = step.replace("&& containerd config dump >/dev/null", "")
    hosts = list(yaml.safe_load((TOP / "e2e/lab-config.yaml").read_text())["registries"])
    env = {"REGISTRY_MIRROR": "http://172.29.0.1:5000", "MIRROR_HOSTS": " ".join(hosts)}
    subprocess.run(["sh", "-ec", step], env=env, check=True)
    mirrors = tomllib.loads(target.read_text())["plugins"][CRI]["registry"]["mirrors"]
    assert set(mirrors) == set(hosts)
    for host in hosts:
        assert mirrors[host] == {"endpoint": [f"http://172.29.0.1:5000/v2/{host}"]}
    # No mirror given: the config is left as it is.
    target.write_text(CONTAINERD_TOML.read_text())
    subprocess.run(["sh", "-ec", step], env={"REGISTRY_MIRROR": "", "MIRROR_HOSTS": ""}, check=True)
    assert target.read_text() == CONTAINERD_TOML.read_text()


def test_dockerfile_copies_what_the_build_context_holds() -> None:
    script = BUILD_NODE.read_text()
    block = script[script.index("if [[ $RUNTIME == containerd ]]") :]
    block = block[: block.index("\nfi\n")]
    # What the containerd branch of build-node.sh puts into "$ctx".
    assert 'mkdir -p "$ctx/bin" "$ctx/manifests" "$ctx/kind-config"' in block
    assert (
        'cp -r "$top/kind-config/node" "$top/kind-config/containerd" "$ctx/kind-config/"' in block
    )
    assert 'cp -r "$debs" "$ctx/debs"' in block
    assert "for b in kubelet kubeadm kubectl crictl" in block
    context_files = {f"bin/{b}" for b in ("kubelet", "kubeadm", "kubectl", "crictl")}
    context_files |= {"manifests/default-cni.yaml", "manifests/default-storage.yaml"}
    context_dirs = {"debs/", "kind-config/node/", "kind-config/containerd/rootfs/"}
    copies = [args for word, args in dockerfile_instructions() if word == "COPY"]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert source in context_files | context_dirs, source
            if source.startswith("kind-config/"):
                assert (TOP / source).is_dir(), source
    # Both runtimes' packages come in as .debs: nothing is fetched during the build.
    assert "apt-get" not in "".join(
        args for word, args in dockerfile_instructions() if word == "RUN"
    )
