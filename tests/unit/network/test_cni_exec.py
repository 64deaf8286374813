"""Running CNI plugins (a fake one that records its calls): chaining, reverse DEL, errors,
timeouts, the per-pod cache and the config dir reader."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from cri_py.network.cni import CniPluginError, Invocation, PodIdentity, parse_config
from cri_py.network.cni_exec import (
    CACHE_FILE,
    CniNetwork,
    PluginRunner,
    config_dir_signature,
    load_cache,
    read_config_dir,
)

from .fake_cni import calls, install_fake_plugins

POD = PodIdentity(namespace="default", name="web", uid="uid-1", sandbox_id="ab" * 32)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    install_fake_plugins(tmp_path / "bin", "fake-a", "fake-b", "fake-c")
    return tmp_path / "bin"


def conflist(log: Path, *plugins: dict[str, Any], version: str = "1.0.0") -> str:
    return json.dumps(
        {
            "cniVersion": version,
            "name": "fakenet",
            "plugins": [{**p, "log": str(log)} for p in plugins],
        }
    )


def invocation(netns: str = "/proc/self/ns/net", **capabilities: Any) -> Invocation:
    return Invocation(container_id="ab" * 32, netns=netns, pod=POD, capabilities=capabilities)


def test_add_chains_results_and_passes_env_and_capabilities(tmp_path: Path, bin_dir: Path) -> None:
    log = tmp_path / "calls.log"
    network = parse_config(
        conflist(
            log,
            {"type": "fake-a", "ip": "10.98.0.7/24"},
            {"type": "fake-b", "capabilities": {"portMappings": True}},
        )
    )
    runner = PluginRunner([str(tmp_path / "nothing"), str(bin_dir)], timeout=10)
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    result = runner.add(network, invocation(portMappings=ports))

    assert result["ips"] == [{"address": "10.98.0.7/24"}]
    first, second = calls(log)
    assert [first["type"], second["type"]] == ["fake-a", "fake-b"]
    assert first["env"] == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ab" * 32,
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{tmp_path / 'nothing'}:{bin_dir}",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
        f"K8S_POD_INFRA_CONTAINER_ID={'ab' * 32};K8S_POD_UID=uid-1",
    }
    assert "prevResult" not in first["stdin"] and "runtimeConfig" not in first["stdin"]
    assert first["stdin"]["name"] == "fakenet" and first["stdin"]["cniVersion"] == "1.0.0"
    assert second["stdin"]["prevResult"] == result
    assert second["stdin"]["runtimeConfig"] == {"portMappings": ports}


def test_del_runs_plugins_in_reverse_with_the_add_result(tmp_path: Path, bin_dir: Path) -> None:
    log = tmp_path / "calls.log"
    network = parse_config(
        conflist(log, {"type": "fake-a"}, {"type": "fake-b"}, {"type": "fake-c"})
    )
    runner = PluginRunner([str(bin_dir)], timeout=10)
    previous = {"cniVersion": "1.0.0", "ips": [{"address": "10.98.0.9/24"}]}
    runner.delete(network, invocation(), previous)
    recorded = calls(log)
    assert [c["type"] for c in recorded] == ["fake-c", "fake-b", "fake-a"]
    assert all(c["command"] == "DEL" for c in recorded)
    assert all(c["stdin"]["prevResult"] == previous for c in recorded)


def test_del_before_spec_0_4_gets_no_previous_result(tmp_path: Path, bin_dir: Path) -> None:
    log = tmp_path / "calls.log"
    network = parse_config(conflist(log, {"type": "fake-a"}, version="0.3.1"))
    PluginRunner([str(bin_dir)], timeout=10).delete(network, invocation(), {"ips": []})
    assert "prevResult" not in calls(log)[0]["stdin"]


def test_del_tolerates_unknown_container_and_reports_the_first_real_failure(
    tmp_path: Path, bin_dir: Path
) -> None:
    log = tmp_path / "calls.log"
    runner = PluginRunner([str(bin_dir)], timeout=10)
    gone = parse_config(
        conflist(log, {"type": "fake-a"}, {"type": "fake-b", "on": {"DEL": "fail3"}})
    )
    runner.delete(gone, invocation(), None)  # code 3: nothing left to clean, not an error
    assert [c["type"] for c in calls(log)] == ["fake-b", "fake-a"]

    log.unlink()
    broken = parse_config(
        conflist(
            log,
            {"type": "fake-a"},
            {"type": "fake-b", "on": {"DEL": "fail"}},
            {"type": "fake-c", "on": {"DEL": "fail11"}},
        )
    )
    with pytest.raises(CniPluginError, match="fake-c DEL failed: code 11: fake failure"):
        runner.delete(broken, invocation(), None)
    # Every plugin still got its DEL.
    assert [c["type"] for c in calls(log)] == ["fake-c", "fake-b", "fake-a"]


def test_add_failure_names_the_plugin_and_stops_the_chain(tmp_path: Path, bin_dir: Path) -> None:
    log = tmp_path / "calls.log"
    network = parse_config(
        conflist(log, {"type": "fake-a", "on": {"ADD": "fail"}}, {"type": "fake-b"})
    )
    with pytest.raises(CniPluginError, match="fake-a ADD failed: code 7: fake failure") as e:
        PluginRunner([str(bin_dir)], timeout=10).add(network, invocation())
    assert e.value.cni_code == 7
    assert [c["type"] for c in calls(log)] == ["fake-a"]


def test_hanging_plugin_is_killed_after_the_timeout(tmp_path: Path, bin_dir: Path) -> None:
    log = tmp_path / "calls.log"
    network = parse_config(conflist(log, {"type": "fake-a", "on": {"ADD": "hang"}}))
    started = time.monotonic()
    with pytest.raises(CniPluginError, match=r"did not finish within 0\.5s and was killed"):
        PluginRunner([str(bin_dir)], timeout=0.5).add(network, invocation())
    assert time.monotonic() - started < 5


def test_missing_plugin_is_reported(tmp_path: Path, bin_dir: Path) -> None:
    network = parse_config(conflist(tmp_path / "log", {"type": "fake-a"}, {"type": "nope"}))
    runner = PluginRunner([str(bin_dir)], timeout=10)
    assert runner.missing(network) == ["nope"]
    with pytest.raises(CniPluginError, match=f"nope ADD failed: no executable in {bin_dir}"):
        runner.add(network, invocation())


def test_teardown_uses_the_cached_config_then_forgets_it(tmp_path: Path, bin_dir: Path) -> None:
    log = tmp_path / "calls.log"
    state_dir = tmp_path / "pod"
    state_dir.mkdir()
    network = parse_config(conflist(log, {"type": "fake-a", "ip": "10.98.0.3/24"}))
    cni = CniNetwork(PluginRunner([str(bin_dir)], timeout=10))
    result = cni.setup(network, invocation(), state_dir)
    cached = load_cache(state_dir)
    assert cached is not None and cached.result == result and cached.network == network

    # The conf dir may say anything by now: teardown does not look at it.
    cni.teardown(state_dir)
    recorded = calls(log)
    assert [c["command"] for c in recorded] == ["ADD", "DEL"]
    assert recorded[1]["stdin"]["prevResult"] == result
    assert recorded[1]["env"]["CNI_NETNS"] == "/proc/self/ns/net"
    assert not (state_dir / CACHE_FILE).exists()
    cni.teardown(state_dir)  # idempotent: nothing cached, nothing run
    assert len(calls(log)) == 2


def test_add_failing_half_way_leaves_the_cache_for_del(tmp_path: Path, bin_dir: Path) -> None:
    log = tmp_path / "calls.log"
    state_dir = tmp_path / "pod"
    state_dir.mkdir()
    network = parse_config(
        conflist(log, {"type": "fake-a"}, {"type": "fake-b", "on": {"ADD": "fail"}})
    )
    cni = CniNetwork(PluginRunner([str(bin_dir)], timeout=10))
    with pytest.raises(CniPluginError):
        cni.setup(network, invocation(netns=str(tmp_path / "gone")), state_dir)
    cached = load_cache(state_dir)
    assert cached is not None and cached.result is None
    cni.teardown(state_dir)
    dels = [c for c in calls(log) if c["command"] == "DEL"]
    assert [c["type"] for c in dels] == ["fake-b", "fake-a"]
    # The pod's namespace is gone: DEL runs with an empty CNI_NETNS, as the spec allows.
    assert all(c["env"]["CNI_NETNS"] == "" for c in dels)
    assert all("prevResult" not in c["stdin"] for c in dels)


def test_failed_teardown_keeps_the_cache_for_a_retry(tmp_path: Path, bin_dir: Path) -> None:
    state_dir = tmp_path / "pod"
    state_dir.mkdir()
    network = parse_config(conflist(tmp_path / "log", {"type": "fake-a", "on": {"DEL": "fail"}}))
    cni = CniNetwork(PluginRunner([str(bin_dir)], timeout=10))
    cni.setup(network, invocation(), state_dir)
    with pytest.raises(CniPluginError):
        cni.teardown(state_dir)
    assert (state_dir / CACHE_FILE).exists()


def test_config_dir_reader_and_signature(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    assert read_config_dir(conf_dir) == ([], []) and config_dir_signature(conf_dir) == ()
    conf_dir.mkdir()
    (conf_dir / "notes.txt").write_text("x")
    empty = config_dir_signature(conf_dir)
    (conf_dir / "10-a.conflist").write_text("{}")
    (conf_dir / "05-b.conf").write_text("[]")
    one = config_dir_signature(conf_dir)
    assert one != empty
    files, unreadable = read_config_dir(conf_dir)
    assert [name for name, _ in files] == [f"{conf_dir}/05-b.conf", f"{conf_dir}/10-a.conflist"]
    assert unreadable == []
    os.utime(conf_dir / "10-a.conflist", ns=(1, 1))
    assert config_dir_signature(conf_dir) != one


def test_an_intent_lost_with_the_power_is_nothing_to_delete(tmp_path: Path, bin_dir: Path) -> None:
    # The cache written before ADD is not fsynced: after a power loss it may be an empty
    # file. The pod's netns went with the power; StopPodSandbox must still succeed.
    log = tmp_path / "calls.log"
    state_dir = tmp_path / "pod"
    state_dir.mkdir()
    (state_dir / CACHE_FILE).write_bytes(b"")
    assert load_cache(state_dir) is None
    CniNetwork(PluginRunner([str(bin_dir)], timeout=10)).teardown(state_dir)
    assert not log.exists()
