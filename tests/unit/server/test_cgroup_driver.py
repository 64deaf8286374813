"""Which cgroup driver the daemon runs (config `cgroups.driver`, detected when empty) and what
RuntimeConfig tells kubelet, whose cgroupDriver follows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from cri_py.api import api_pb2 as pb
from cri_py.config import parse_layers
from cri_py.errors import ConfigError, StartupError
from cri_py.linux.cgroupfs import Cgroupfs, Hierarchy
from cri_py.runtime.node import NodeState
from cri_py.runtime.sandboxes import SandboxService
from cri_py.runtime.systemd_cgroups import SystemdCgroupManager
from cri_py.server import daemon
from cri_py.server.runtime import RuntimeServicer


@pytest.mark.parametrize(("driver", "reported"), [("systemd", "SYSTEMD"), ("cgroupfs", "CGROUPFS")])
async def test_runtime_config_reports_the_driver_in_use(
    tmp_path: Path, driver: str, reported: str
) -> None:
    config = parse_layers([("test", {"cgroups": {"driver": driver}})])
    servicer = RuntimeServicer(config, NodeState(tmp_path), cast(SandboxService, None))
    response = await servicer.RuntimeConfig(pb.RuntimeConfigRequest(), cast(Any, None))
    assert pb.CgroupDriver.Name(response.linux.cgroup_driver) == reported


@pytest.mark.parametrize(
    ("key", "value"),
    [("driver", "systemd-ish"), ("default_slice", "a/b.slice"), ("default_slice", "pods")],
)
def test_bad_driver_settings_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"cgroups.{key}"):
        parse_layers([("test", {"cgroups": {key: value}})])


class FakeClient:
    def version(self) -> int:
        return 252


@pytest.fixture
def v2_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = Cgroupfs([Hierarchy(str(tmp_path), "/", frozenset(), 2)])
    monkeypatch.setattr(Cgroupfs, "from_host", classmethod(lambda cls: fs))


def test_detection_picks_systemd_when_it_answers(
    v2_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "connect_systemd", lambda: (FakeClient(), ""))
    manager = daemon.start_cgroups(parse_layers([]))
    assert isinstance(manager, SystemdCgroupManager) and manager.driver == "systemd"
    assert manager.default_slice == "cri-py.slice"


def test_detection_falls_back_to_cgroupfs_without_systemd(
    v2_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "connect_systemd", lambda: (None, "PID 1 is not systemd"))
    manager = daemon.start_cgroups(parse_layers([]))
    assert manager is not None and manager.driver == "cgroupfs"
    assert not isinstance(manager, SystemdCgroupManager)


def test_configured_systemd_without_systemd_refuses_to_start(
    v2_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "connect_systemd", lambda: (None, "PID 1 is not systemd"))
    with pytest.raises(StartupError, match="PID 1 is not systemd"):
        daemon.start_cgroups(parse_layers([("test", {"cgroups": {"driver": "systemd"}})]))


def test_configured_cgroupfs_never_asks_systemd(
    v2_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> Any:
        raise AssertionError("systemd asked")

    monkeypatch.setattr(daemon, "connect_systemd", refuse)
    manager = daemon.start_cgroups(parse_layers([("test", {"cgroups": {"driver": "cgroupfs"}})]))
    assert manager is not None and manager.driver == "cgroupfs"
