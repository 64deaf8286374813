"""Which network a pod gets and NetworkReady: CNI when a usable config exists, else the
built-in bridge (a fake here); the conf dir is re-read when it changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cri_py.config import NetworkConfig
from cri_py.errors import Unavailable
from cri_py.model.network import NetworkState
from cri_py.model.sandbox import PodMetadata, PortMapping, SandboxConfig
from cri_py.network.bridge import BuiltinNetwork, PodNetwork
from cri_py.network.cni_exec import CACHE_FILE
from cri_py.network.selector import BUILTIN, CNI, NetworkSelector

from .fake_cni import calls, install_fake_plugins

SANDBOX = "cd" * 32


class FakeBridge(BuiltinNetwork):
    def __init__(self, state_dir: Path, ready: bool = True) -> None:
        super().__init__(NetworkConfig(), state_dir)
        self.ready = ready
        self.log: list[str] = []

    def state(self) -> NetworkState:
        if self.ready:
            return NetworkState(True)
        return NetworkState(False, "NetworkPluginNotReady", "bridge cri-py0 does not exist yet")

    def setup(self, sandbox_id: str, netns: Path) -> PodNetwork:
        self.log.append(f"setup {sandbox_id}")
        return PodNetwork("eth0", "10.88.0.2", 16, "10.88.0.1")

    def teardown(self, sandbox_id: str) -> None:
        self.log.append(f"teardown {sandbox_id}")


class Env:
    def __init__(self, tmp_path: Path, bridge_ready: bool = True, builtin: bool = True) -> None:
        self.conf_dir = tmp_path / "net.d"
        self.bin_dir = tmp_path / "bin"
        self.log = tmp_path / "calls.log"
        self.pod_dir = tmp_path / "pod"
        self.pod_dir.mkdir()
        install_fake_plugins(self.bin_dir, "fake-a", "fake-b")
        self.bridge = FakeBridge(tmp_path / "builtin", bridge_ready)
        config = NetworkConfig(
            cni_conf_dir=str(self.conf_dir), cni_bin_dirs=(str(self.bin_dir),), builtin=builtin
        )
        self.loopbacks: list[Path] = []
        self.selector = NetworkSelector(config, self.bridge, loopback_up=self.loopbacks.append)

    def write_conflist(self, name: str, *types: str) -> None:
        self.conf_dir.mkdir(exist_ok=True)
        plugins: list[dict[str, object]] = [
            {"type": t, "log": str(self.log), "ip": f"10.98.0.{i + 5}/24"}
            for i, t in enumerate(types)
        ]
        plugins[-1]["capabilities"] = {"portMappings": True}
        document = {"cniVersion": "1.0.0", "name": name, "plugins": plugins}
        (self.conf_dir / f"10-{name}.conflist").write_text(json.dumps(document))


def test_without_cni_config_pods_get_the_builtin_network(tmp_path: Path) -> None:
    env = Env(tmp_path)
    assert env.selector.state() == NetworkState(True)
    assert env.selector.choose() == BUILTIN
    ips = env.selector.setup(BUILTIN, SANDBOX, Path("/x"), env.pod_dir, pod())
    assert ips == ("10.88.0.2",)
    env.selector.teardown(BUILTIN, SANDBOX, env.pod_dir)
    assert env.bridge.log == [f"setup {SANDBOX}", f"teardown {SANDBOX}"]


def test_conflist_written_later_is_picked_up_without_restart(tmp_path: Path) -> None:
    env = Env(tmp_path, bridge_ready=False)
    state = env.selector.state()
    assert not state.ready and str(env.conf_dir) in state.message
    assert "built-in network is not ready: bridge cri-py0" in state.message

    env.write_conflist("podnet", "fake-a", "fake-b")
    assert env.selector.state() == NetworkState(True)
    assert env.selector.choose() == CNI


def test_builtin_off_pods_wait_for_a_cni_config(tmp_path: Path) -> None:
    # A kind node (network.builtin: false): until kindnet writes its conflist the node is not
    # ready and no pod lands on the bridge, whose addresses other nodes could not route.
    env = Env(tmp_path, bridge_ready=True, builtin=False)
    state = env.selector.state()
    assert not state.ready
    assert state.message == (
        f"no usable CNI config in {env.conf_dir} and the built-in network is off "
        "(network.builtin: false)"
    )
    with pytest.raises(Unavailable, match="built-in network is off"):
        env.selector.choose()
    assert env.bridge.log == []
    env.write_conflist("podnet", "fake-a", "fake-b")
    assert env.selector.state() == NetworkState(True)
    assert env.selector.choose() == CNI


def test_skipped_files_are_named_in_the_not_ready_reason(tmp_path: Path) -> None:
    env = Env(tmp_path, bridge_ready=False)
    env.conf_dir.mkdir()
    (env.conf_dir / "00-bad.conflist").write_text("{")
    state = env.selector.state()
    assert f"{env.conf_dir}/00-bad.conflist: not valid JSON" in state.message


def test_missing_plugin_makes_the_network_not_ready_and_refuses_pods(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.write_conflist("podnet", "fake-a", "absent")
    state = env.selector.state()
    assert not state.ready
    assert state.message == (
        f"CNI network podnet ({env.conf_dir}/10-podnet.conflist): plugin absent not found in "
        f"{env.bin_dir}"
    )
    with pytest.raises(Unavailable, match="plugin absent not found"):
        env.selector.choose()
    # Installing the plugin is enough; the config did not change.
    install_fake_plugins(env.bin_dir, "absent")
    assert env.selector.state().ready


def test_new_cni_dirs_from_a_reload_are_used_at_once(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.write_conflist("podnet", "fake-a", "late")
    assert not env.selector.state().ready  # `late` is in no bin dir yet
    late_bin = tmp_path / "late-bin"
    install_fake_plugins(late_bin, "late")
    env.selector.set_cni_dirs(str(env.conf_dir), [str(env.bin_dir), str(late_bin)])
    assert env.selector.state().ready and env.selector.uses_cni()
    # A conf dir with no config: back to the built-in network, without waiting for a change.
    env.selector.set_cni_dirs(str(tmp_path / "empty"), [str(env.bin_dir)])
    assert env.selector.choose() == BUILTIN and not env.selector.uses_cni()


def test_cni_pod_gets_its_ips_and_port_mappings_and_del_uses_the_add_config(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    env.write_conflist("first", "fake-a", "fake-b")
    config = pod(PortMapping(protocol=1, container_port=53, host_port=5353))
    ips = env.selector.setup(CNI, SANDBOX, Path("/proc/self/ns/net"), env.pod_dir, config)
    assert ips == ("10.98.0.5", "10.98.0.6")
    assert env.loopbacks == [Path("/proc/self/ns/net")]
    add = calls(env.log)
    assert add[0]["env"]["CNI_ARGS"].endswith(
        f"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID={SANDBOX};"
        "K8S_POD_UID=uid-web"
    )
    assert add[1]["stdin"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]
    }

    # The conf dir now says something else; the pod's DEL still goes to its own network.
    (env.conf_dir / "10-first.conflist").unlink()
    env.write_conflist("second", "fake-b")
    assert env.selector.cni_config().config is not None
    env.selector.teardown(CNI, SANDBOX, env.pod_dir)
    dels = calls(env.log)[2:]
    assert [(c["command"], c["type"], c["stdin"]["name"]) for c in dels] == [
        ("DEL", "fake-b", "first"),
        ("DEL", "fake-a", "first"),
    ]
    assert not (env.pod_dir / CACHE_FILE).exists()
    assert env.bridge.log == []


def pod(*ports: PortMapping) -> SandboxConfig:
    return SandboxConfig(metadata=PodMetadata("web", "uid-web", "ns"), port_mappings=ports)
