"""NRI against a real daemon: a plugin in this test (tests/unit/nri/fake_plugin.py, cri-py's own
framing; critest's NRI specs check the protocol against the Go stub) sees the lifecycle in
order and adjusts a container, and the host shows it: environment, a bind mount, an rlimit,
the OOM score, the memory cgroup, annotations; a refusal or a conflict fails CreateContainer
and leaves nothing; UpdateContainers from a plugin reaches the live cgroup; a plugin from the
plugin dir is started by the daemon.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode
from cri_py.nri import api_pb2 as api

from ..unit.nri.fake_plugin import FakePlugin
from .conftest import needs_root
from .test_containers import BUSYBOX, ROOT, Lab, open_lab, read_log

pytestmark = needs_root

CGROUP_PARENT = f"/cri-py-tests/nri-{secrets.token_hex(4)}"
EVENTS = [
    api.RUN_POD_SANDBOX,
    api.STOP_POD_SANDBOX,
    api.REMOVE_POD_SANDBOX,
    api.CREATE_CONTAINER,
    api.POST_CREATE_CONTAINER,
    api.START_CONTAINER,
    api.POST_START_CONTAINER,
    api.UPDATE_CONTAINER,
    api.POST_UPDATE_CONTAINER,
    api.STOP_CONTAINER,
    api.REMOVE_CONTAINER,
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("nri")
    plugins = base / "plugins"
    plugins.mkdir()
    script = plugins / "90-prestarted"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.unit.nri.fake_plugin import main\nmain()\n"
    )
    script.chmod(0o755)
    config = (
        (ROOT / "e2e" / "lab-config.yaml").read_text()
        + "network:\n  bridge: cri-pytnri\n  subnet: 10.66.0.0/24\n  cni_conf_dir: /nonexistent\n"
        + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
        + f"nri:\n  enable: true\n  socket_path: {base}/nri.sock\n  plugin_path: {plugins}\n"
        + f"  plugin_config_path: {base}/nri-conf\n"
    )
    with open_lab(base, config, cgroup_parent=CGROUP_PARENT) as opened:
        yield opened


def nri_socket(lab: Lab) -> str:
    return str(lab.daemon.root_dir.parent.parent / "nri.sock")


def connect(lab: Lab, plugin: FakePlugin) -> FakePlugin:
    plugin.connect(nri_socket(lab))
    # The runtime holds its events during a Synchronize and lists the plugin before it lets
    # them go: every event from here on reaches it.
    plugin.wait_call("Synchronize")
    return plugin


def create(lab: Lab, sandbox_id: str, name: str, command: list[str]) -> str:
    return lab.create(sandbox_id, name, command)


def spec_of(lab: Lab, container_id: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(
        (lab.daemon.root_dir / "containers" / container_id / "config.json").read_text()
    )
    return spec


def memory_limit(cgroup: str) -> int:
    fs = Cgroupfs.from_host()
    if fs.mode == CgroupMode.V2:
        return int(fs.read(cgroup, "memory", "memory.max"))
    return int(fs.read(cgroup, "memory", "memory.limit_in_bytes"))


def verbose_pid(lab: Lab, container_id: str) -> int:
    request = pb.ContainerStatusRequest(container_id=container_id, verbose=True)
    info = json.loads(lab.daemon.runtime().ContainerStatus(request, timeout=10).info["info"])
    return int(info["pid"])


def wait_log(lab: Lab, sandbox_id: str, name: str, lines: int) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        path = Path(lab.configs[sandbox_id].log_directory) / f"{name}.log"
        if path.exists():
            texts = [text for _, _, text in read_log(lab, sandbox_id, name)]
            if len(texts) >= lines:
                return texts
        time.sleep(0.05)
    raise AssertionError(f"{name}: fewer than {lines} log lines")


def test_a_plugins_adjustments_reach_the_container_and_it_sees_every_event_in_order(
    lab: Lab, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "marker").write_text("from-the-host\n")

    def adjust(request: api.CreateContainerRequest) -> api.CreateContainerResponse:
        reply = api.CreateContainerResponse()
        if request.container.name != "adjusted":
            return reply
        a = reply.adjust
        a.env.add(key="NRI_ENV", value="hello")
        a.annotations["nri.test/adjusted"] = "yes"
        a.mounts.add(
            destination="/nri-data", type="bind", source=str(data), options=["rbind", "ro"]
        )
        a.rlimits.add(type="RLIMIT_NOFILE", hard=4242, soft=4242)
        a.linux.resources.memory.limit.value = 64 << 20
        a.linux.oom_score_adj.value = 321
        return reply

    plugin = connect(lab, FakePlugin("adjuster", "10", EVENTS, {"CreateContainer": adjust}))
    try:
        pod = lab.run_pod("nri-adjust")
        script = "echo env=$NRI_ENV; cat /nri-data/marker; ulimit -n; exec sleep 3600"
        cid = create(lab, pod, "adjusted", ["sh", "-c", script])
        lab.start(cid)
        assert wait_log(lab, pod, "adjusted", 3)[:3] == ["env=hello", "from-the-host", "4242"]
        pid = verbose_pid(lab, cid)
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "321"
        spec = spec_of(lab, cid)
        assert memory_limit(spec["linux"]["cgroupsPath"]) == 64 << 20
        assert spec["annotations"]["nri.test/adjusted"] == "yes"
        # The plugin the daemon started from its plugin dir adjusted it too (index 90: after).
        assert spec["annotations"]["fake-plugin/started-by"] == "runtime"
        # The mount is read-only inside, as asked.
        denied = lab.exec(cid, "sh", "-c", "echo x > /nri-data/marker")
        assert denied.exit_code != 0 and (data / "marker").read_text() == "from-the-host\n"

        # A plugin's own update of a container goes to its live cgroup and its status.
        update = api.ContainerUpdate(container_id=cid)
        update.linux.resources.memory.limit.value = 96 << 20
        assert plugin.update_containers([update]) == []
        assert memory_limit(spec["linux"]["cgroupsPath"]) == 96 << 20
        assert lab.status(cid).resources.linux.memory_limit_in_bytes == 96 << 20

        lab.remove_pod(pod)
        lab.pods.remove(pod)
        plugin.wait_call("RemovePodSandbox")

        def concerns(request: Any) -> bool:
            fields = request.DESCRIPTOR.fields_by_name
            if "pod" not in fields or request.pod.id != pod:
                return False
            return "container" not in fields or request.container.id == cid

        ours = [m for m, r, _ in plugin.calls if concerns(r)]
        assert ours == [
            "RunPodSandbox",
            "CreateContainer",
            "PostCreateContainer",
            "StartContainer",
            "PostStartContainer",
            "StopContainer",
            "StopPodSandbox",
            "RemoveContainer",
            "RemovePodSandbox",
        ]
    finally:
        plugin.close()


def test_a_plugin_refusing_a_create_fails_it_and_leaves_nothing(lab: Lab) -> None:
    def refuse(request: api.CreateContainerRequest) -> None:
        if request.container.name == "refused":
            raise ValueError("not on my node")

    plugin = connect(
        lab, FakePlugin("guard", "05", [api.CREATE_CONTAINER], {"CreateContainer": refuse})
    )
    try:
        pod = lab.run_pod("nri-refuse")
        containers = lab.daemon.root_dir / "containers"
        before = set(containers.iterdir()) if containers.exists() else set()
        with pytest.raises(grpc.RpcError) as refused:
            create(lab, pod, "refused", ["sleep", "1"])
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "05-guard failed CreateContainer: not on my node" in str(refused.value.details())
        assert (set(containers.iterdir()) if containers.exists() else set()) == before
        listed = lab.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10)
        assert [c for c in listed.containers if c.metadata.name == "refused"] == []
        # The same name is free again once the plugin lets it through.
        plugin.handlers.clear()
        assert create(lab, pod, "refused", ["sleep", "1"])
    finally:
        plugin.close()


def test_two_plugins_setting_the_same_field_fail_the_create(lab: Lab) -> None:
    def set_env(request: api.CreateContainerRequest) -> api.CreateContainerResponse:
        reply = api.CreateContainerResponse()
        if request.container.name == "contested":
            reply.adjust.env.add(key="OWNER", value="me")
        return reply

    first = connect(
        lab, FakePlugin("one", "01", [api.CREATE_CONTAINER], {"CreateContainer": set_env})
    )
    second = connect(
        lab, FakePlugin("two", "02", [api.CREATE_CONTAINER], {"CreateContainer": set_env})
    )
    try:
        pod = lab.run_pod("nri-conflict")
        with pytest.raises(grpc.RpcError) as conflict:
            create(lab, pod, "contested", ["sleep", "1"])
        assert "plugins '01-one' and '02-two' both tried to set env 'OWNER'" in str(
            conflict.value.details()
        )
    finally:
        first.close()
        second.close()


def test_the_daemon_is_fine_with_no_plugin_and_after_plugins_go(lab: Lab) -> None:
    pod = lab.run_pod("nri-none")
    cid = create(lab, pod, "plain", ["sh", "-c", "echo ok; exec sleep 3600"])
    lab.start(cid)
    assert wait_log(lab, pod, "plain", 1) == ["ok"]
    assert BUSYBOX in spec_of(lab, cid)["annotations"]["io.kubernetes.cri.image-name"]
