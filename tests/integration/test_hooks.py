"""OCI hooks against a real daemon: hooks an NRI plugin (tests/unit/nri/fake_plugin.py) or a CDI
spec adds run at their points, in their namespaces, with the container's state on stdin. Host
scripts record what they saw (their mount, PID and network namespaces, the state JSON) in a
file the tests read: prestart, createRuntime, poststart and poststop in the runtime's
namespaces (also for a pod sharing one PID namespace), createContainer in the container's
before pivot_root (a host path), startContainer in the container (its own /bin/sh). A failing
or hanging create hook fails CreateContainer and leaves no process, mount or cgroup; a failing
poststart is only logged; poststop runs at removal, also after the daemon was down.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from cri_py.api import api_pb2 as pb
from cri_py.nri import api_pb2 as api

from ..unit.nri.fake_plugin import FakePlugin
from .conftest import needs_root, start_daemon
from .test_containers import BUSYBOX, ROOT, Lab, open_lab

pytestmark = needs_root

CGROUP_PARENT = f"/cri-py-tests/hooks-{secrets.token_hex(4)}"
POD_PID, CONTAINER_PID = 0, 1
HOST_PATH = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
# What each recording hook writes: label, its mount, PID and network namespaces, its stdin.
RECORD = """#!/bin/sh
state=$(cat)
printf '%s %s %s %s %s\\n' "$2" "$(readlink /proc/self/ns/mnt)" "$(readlink /proc/self/ns/pid)" \\
    "$(readlink /proc/self/ns/net)" "$state" >> "$1"
[ -z "$3" ] || { echo "$3" >&2; exit 7; }
"""
HANG = """#!/bin/sh
echo $$ > "$1"
exec sleep 60
"""


def lab_config(base: Path) -> str:
    return (
        (ROOT / "e2e" / "lab-config.yaml").read_text()
        + "network:\n  bridge: cri-pythk\n  subnet: 10.67.0.0/24\n  cni_conf_dir: /nonexistent\n"
        + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
        + f"nri:\n  enable: true\n  socket_path: {base}/nri.sock\n"
        + f"  plugin_path: {base}/no-plugins\n  plugin_config_path: {base}/nri-conf\n"
        + f"cdi:\n  spec_dirs: [{json.dumps(str(base / 'cdi'))}]\n"
    )


class Hooked:
    """The lab, a plugin that adds `hooks[name]` to the container called `name`, and the dir
    of the recording scripts."""

    def __init__(self, lab: Lab, base: Path) -> None:
        self.lab = lab
        self.base = base
        self.hooks: dict[str, api.Hooks] = {}
        self.plugin = FakePlugin(
            "hooker", "20", [api.CREATE_CONTAINER], {"CreateContainer": self._adjust}
        )
        self.record = self._script("record.sh", RECORD)
        self.hang = self._script("hang.sh", HANG)

    def _script(self, name: str, text: str) -> str:
        path = self.base / name
        path.write_text(text)
        path.chmod(0o755)
        return str(path)

    def _adjust(self, request: api.CreateContainerRequest) -> api.CreateContainerResponse:
        reply = api.CreateContainerResponse()
        hooks = self.hooks.get(request.container.name)
        if hooks is not None:
            reply.adjust.hooks.CopyFrom(hooks)
        return reply

    def recorder(self, log: Path, label: str, fail: str = "") -> api.Hook:
        args = ["record.sh", str(log), label] + ([fail] if fail else [])
        return api.Hook(path=self.record, args=args, env=HOST_PATH)

    def connect(self) -> None:
        self.plugin.connect(str(self.base / "nri.sock"))
        self.plugin.wait_call("Synchronize")


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooked]:
    base = tmp_path_factory.mktemp("hooks")
    (base / "cdi").mkdir()
    # Readable by the container's processes too (createContainer runs in its namespaces).
    base.chmod(0o755)
    with open_lab(base, lab_config(base), cgroup_parent=CGROUP_PARENT) as lab:
        setup = Hooked(lab, base)
        setup.connect()
        try:
            yield setup
        finally:
            setup.plugin.close()


def records(log: Path) -> list[tuple[str, tuple[str, str, str], dict[str, Any]]]:
    """(label, (mnt, pid, net) namespaces, state) of each hook that ran, in order."""
    result = []
    for line in log.read_text().splitlines() if log.exists() else []:
        label, mnt, pid, net, state = line.split(" ", 4)
        result.append((label, (mnt, pid, net), json.loads(state)))
    return result


def records_once(
    log: Path, count: int, timeout: float = 10.0
) -> list[tuple[str, tuple[str, str, str], dict[str, Any]]]:
    """`records` once `count` hooks have run: poststop hooks run after RemoveContainer's
    answer (an exited container's cleanup follows it)."""
    deadline = time.monotonic() + timeout
    while len(seen := records(log)) < count:
        assert time.monotonic() < deadline, f"{count} hooks did not run within {timeout}s: {seen}"
        time.sleep(0.02)
    return seen


def namespaces(pid: int | str) -> tuple[str, str, str]:
    return tuple(os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("mnt", "pid", "net"))  # type: ignore[return-value]


def init_pid(lab: Lab, container_id: str) -> int:
    request = pb.ContainerStatusRequest(container_id=container_id, verbose=True)
    info = json.loads(lab.daemon.runtime().ContainerStatus(request, timeout=10).info["info"])
    return int(info["pid"])


def remove(lab: Lab, container_id: str) -> None:
    rt = lab.daemon.runtime()
    rt.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0), timeout=30)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)


def bundle(lab: Lab, container_id: str) -> str:
    return str(lab.daemon.root_dir / "containers" / container_id)


def traces_of(container_id: str) -> list[str]:
    """Mounts and cgroups of the host that name the container."""
    found = [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if container_id in m]
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if container_id in d]
    return found


def gone(pid: int, timeout: float = 10.0) -> bool:
    """The process is gone (or a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.mark.parametrize("pid_mode", [CONTAINER_PID, POD_PID], ids=["own-pid-ns", "pod-pid-ns"])
def test_each_hook_runs_at_its_point_in_its_namespace_with_the_state(
    hooked: Hooked, tmp_path: Path, pid_mode: int
) -> None:
    lab, log = hooked.lab, tmp_path / "log"
    tmp_path.chmod(0o777)  # createContainer writes here from the container's namespaces
    name = f"all-hooks-{pid_mode}"
    hooks = api.Hooks()
    hooks.prestart.append(hooked.recorder(log, "prestart"))
    hooks.create_runtime.append(hooked.recorder(log, "createRuntime"))
    hooks.create_container.append(hooked.recorder(log, "createContainer"))
    # Resolved in the container: its busybox, writing into its own root.
    hooks.start_container.add(
        path="/bin/sh",
        args=["sh", "-c", "cat > /start-state; readlink /proc/self/ns/mnt > /start-ns"],
        env=["PATH=/bin"],
    )
    hooks.poststart.append(hooked.recorder(log, "poststart"))
    hooks.poststop.append(hooked.recorder(log, "poststop"))
    hooked.hooks[name] = hooks
    pod = lab.run_pod(f"hooks-{pid_mode}", pid_mode=pid_mode)
    cid = lab.create(pod, name, ["sleep", "3600"], pid_mode=pid_mode)
    pid = init_pid(lab, cid)
    host = namespaces("self")
    container = namespaces(pid)
    assert container[0] != host[0] and container[2] != host[2]
    seen = records(log)
    assert [label for label, _, _ in seen] == ["prestart", "createRuntime", "createContainer"]
    for label, _, state in seen:
        assert state["id"] == cid and state["pid"] == pid, label
        assert state["status"] == "creating" and state["bundle"] == bundle(lab, cid), label
        assert state["ociVersion"] and "io.kubernetes.cri.sandbox-id" in state["annotations"]
    # The runtime's hooks are the host's processes, even where the pod shares a PID namespace.
    assert seen[0][1] == host and seen[1][1] == host
    # createContainer: in the container's mount, PID and network namespaces.
    assert seen[2][1] == container

    lab.start(cid)
    start_state = json.loads(lab.exec(cid, "cat", "/start-state").stdout)
    assert start_state["status"] == "created" and start_state["pid"] == pid
    assert lab.exec(cid, "cat", "/start-ns").stdout.decode().strip() == container[0]
    seen = records(log)
    assert seen[-1][0] == "poststart" and seen[-1][1] == host
    assert seen[-1][2]["status"] == "running" and seen[-1][2]["pid"] == pid

    remove(lab, cid)
    label, where, state = records_once(log, 5)[-1]
    assert (label, where) == ("poststop", host)
    assert state["status"] == "stopped" and state["id"] == cid and "pid" not in state
    assert len(records(log)) == 5


def test_a_failing_create_runtime_hook_fails_create_and_leaves_nothing(
    hooked: Hooked, tmp_path: Path
) -> None:
    lab, log = hooked.lab, tmp_path / "log"
    hooks = api.Hooks()
    hooks.create_runtime.append(hooked.recorder(log, "createRuntime", fail="no device here"))
    hooks.create_container.append(hooked.recorder(log, "createContainer"))
    hooks.poststop.append(hooked.recorder(log, "poststop"))
    hooked.hooks["refused-by-hook"] = hooks
    pod = lab.run_pod("hooks-fail")
    with pytest.raises(grpc.RpcError) as failed:
        lab.create(pod, "refused-by-hook", ["sleep", "3600"])
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = str(failed.value.details())
    assert "createRuntime hook" in details and "exited with status 7: no device here" in details
    # Only the failing hook ran: not the createContainer hook after it.
    [(label, _, state)] = records(log)
    assert label == "createRuntime"
    cid, pid = state["id"], state["pid"]
    assert gone(pid), f"the container's init {pid} survived"
    assert not Path(bundle(lab, cid)).exists()
    assert traces_of(cid) == []
    listed = lab.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10)
    assert [c.id for c in listed.containers if c.metadata.name == "refused-by-hook"] == []


def test_a_failing_create_container_hook_fails_create_and_leaves_nothing(
    hooked: Hooked, tmp_path: Path
) -> None:
    lab, log = hooked.lab, tmp_path / "log"
    tmp_path.chmod(0o777)
    hooks = api.Hooks()
    hooks.create_runtime.append(hooked.recorder(log, "createRuntime"))
    hooks.create_container.append(hooked.recorder(log, "createContainer", fail="bad mounts"))
    hooked.hooks["refused-inside"] = hooks
    pod = lab.run_pod("hooks-fail-inside")
    with pytest.raises(grpc.RpcError) as failed:
        lab.create(pod, "refused-inside", ["sleep", "3600"])
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "createContainer hook" in str(failed.value.details())
    assert "exited with status 7: bad mounts" in str(failed.value.details())
    [(_, _, state), (label, _, _)] = records(log)
    assert label == "createContainer"
    assert gone(state["pid"])
    assert not Path(bundle(lab, state["id"])).exists()
    assert traces_of(state["id"]) == []


def test_a_hook_past_its_timeout_is_killed_and_fails_the_call(
    hooked: Hooked, tmp_path: Path
) -> None:
    lab = hooked.lab
    pid_file = tmp_path / "hook.pid"
    hooks = api.Hooks()
    hooks.prestart.add(
        path=hooked.hang,
        args=["hang.sh", str(pid_file)],
        env=HOST_PATH,
        timeout=api.OptionalInt(value=1),
    )
    hooked.hooks["hanging"] = hooks
    pod = lab.run_pod("hooks-hang")
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        lab.create(pod, "hanging", ["sleep", "3600"])
    assert time.monotonic() - began < 15
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "prestart hook" in str(failed.value.details())
    assert "still running after 1s, killed" in str(failed.value.details())
    assert gone(int(pid_file.read_text()))


def test_a_failing_poststart_hook_is_logged_and_the_start_stands(
    hooked: Hooked, tmp_path: Path
) -> None:
    lab, log = hooked.lab, tmp_path / "log"
    hooks = api.Hooks()
    hooks.poststart.append(hooked.recorder(log, "poststart-1", fail="poststart trouble"))
    hooks.poststart.append(hooked.recorder(log, "poststart-2"))
    hooked.hooks["poststart-fails"] = hooks
    pod = lab.run_pod("hooks-poststart")
    cid = lab.create(pod, "poststart-fails", ["sleep", "3600"])
    lab.start(cid)
    assert lab.status(cid).state == pb.CONTAINER_RUNNING
    # Both ran: a poststart failure does not stop the next one.
    assert [label for label, _, _ in records(log)] == ["poststart-1", "poststart-2"]
    shim_log = (lab.daemon.run_dir / "sandboxes" / pod / "shim.log").read_text()
    assert "poststart hook" in shim_log and "poststart trouble" in shim_log


def test_a_failing_start_container_hook_fails_the_start(hooked: Hooked) -> None:
    lab = hooked.lab
    hooks = api.Hooks()
    hooks.start_container.add(path="/bin/false")
    hooked.hooks["start-refused"] = hooks
    pod = lab.run_pod("hooks-start")
    cid = lab.create(pod, "start-refused", ["sleep", "3600"])
    pid = init_pid(lab, cid)
    with pytest.raises(grpc.RpcError) as failed:
        lab.start(cid)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "startContainer hook /bin/false: exited with status 1" in str(failed.value.details())
    status = lab.wait_exited(cid)
    assert status.reason == "StartError" and "startContainer hook" in status.message
    assert gone(pid)


def test_poststop_of_a_container_that_died_while_the_daemon_was_down_runs_at_removal(
    hooked: Hooked, tmp_path: Path
) -> None:
    lab, log = hooked.lab, tmp_path / "log"
    hooks = api.Hooks()
    hooks.poststop.append(hooked.recorder(log, "poststop"))
    hooked.hooks["dies-alone"] = hooks
    pod = lab.run_pod("hooks-restart")
    cid = lab.create(pod, "dies-alone", ["sleep", "3600"])
    lab.start(cid)
    pid = init_pid(lab, cid)
    hooked.plugin.close()
    lab.daemon.stop()
    try:
        os.kill(pid, signal.SIGKILL)
        assert gone(pid)
        assert records(log) == []
    finally:
        lab.daemon = start_daemon(hooked.base / "daemon", lab_config(hooked.base))
        hooked.plugin = FakePlugin(
            "hooker", "20", [api.CREATE_CONTAINER], {"CreateContainer": hooked._adjust}
        )
        hooked.connect()
    assert lab.wait_exited(cid).exit_code == 137
    lab.daemon.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    [(label, where, state)] = records_once(log, 1)
    assert label == "poststop" and where == namespaces("self")
    assert state["status"] == "stopped" and state["id"] == cid


def test_a_cdi_devices_hooks_run_with_its_other_edits(hooked: Hooked, tmp_path: Path) -> None:
    lab, log = hooked.lab, tmp_path / "log"
    spec = {
        "cdiVersion": "0.6.0",
        "kind": "hooks.example.com/gpu",
        "devices": [
            {
                "name": "0",
                "containerEdits": {
                    "env": ["GPU=0"],
                    "hooks": [
                        {
                            "hookName": "createRuntime",
                            "path": hooked.record,
                            "args": ["record.sh", str(log), "cdi-createRuntime"],
                            "env": HOST_PATH,
                            "timeout": 5,
                        },
                        {
                            "hookName": "poststop",
                            "path": hooked.record,
                            "args": ["record.sh", str(log), "cdi-poststop"],
                            "env": HOST_PATH,
                        },
                    ],
                },
            }
        ],
    }
    (hooked.base / "cdi" / "gpu.yaml").write_text(yaml.safe_dump(spec))
    pod = lab.run_pod("hooks-cdi")
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="with-gpu"),
        image=pb.ImageSpec(image=BUSYBOX),
        command=["sleep", "3600"],
        CDI_devices=[pb.CDIDevice(name="hooks.example.com/gpu=0")],
    )
    cid = (
        lab.daemon.runtime()
        .CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=config, sandbox_config=lab.configs[pod]
            ),
            timeout=30,
        )
        .container_id
    )
    [(label, where, state)] = records(log)
    assert label == "cdi-createRuntime" and where == namespaces("self")
    assert state["id"] == cid and state["pid"] == init_pid(lab, cid)
    lab.start(cid)
    spec = json.loads((Path(bundle(lab, cid)) / "config.json").read_text())
    assert "GPU=0" in spec["process"]["env"]
    result = lab.exec(cid, "cat", "/proc/1/environ")
    assert b"GPU=0" in result.stdout.split(b"\0"), result
    remove(lab, cid)
    assert [label for label, _, _ in records_once(log, 2)] == ["cdi-createRuntime", "cdi-poststop"]


def test_hooks_of_a_pod_with_its_own_users_run_in_the_right_namespaces(
    hooked: Hooked, tmp_path: Path
) -> None:
    from .test_userns import create as create_with_users
    from .test_userns import run_pod as run_pod_with_users
    from .test_userns import user_options

    lab, log = hooked.lab, tmp_path / "log"
    tmp_path.chmod(0o777)
    hooks = api.Hooks()
    hooks.create_runtime.append(hooked.recorder(log, "createRuntime"))
    hooks.create_container.append(hooked.recorder(log, "createContainer"))
    hooked.hooks["own-users"] = hooks
    pod = run_pod_with_users(lab, "hooks-userns", user_options())
    cid = create_with_users(lab, pod, "own-users", ["sleep", "3600"], users=user_options())
    pid = init_pid(lab, cid)
    # The shim's network namespace belongs to the pod's user namespace: the runtime's hook
    # still runs in the host's.
    [(first, runtime_ns, _), (second, container_ns, _)] = records(log)
    assert (first, runtime_ns) == ("createRuntime", namespaces("self"))
    assert (second, container_ns) == ("createContainer", namespaces(pid))
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    lab.start(cid)
    assert lab.status(cid).state == pb.CONTAINER_RUNNING
