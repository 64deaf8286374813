"""CDI devices and runtime handlers against a real daemon: a CDI spec in a temp dir gives a
container a device node, a mount and env vars (read back from inside); an unknown device fails
CreateContainer and leaves nothing; a pod of the `test-handler` runtime handler runs with that
handler's seccomp default and capabilities, before and after a daemon restart.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import yaml

from cri_py.api import api_pb2 as pb

from .conftest import needs_root, start_daemon
from .test_containers import BUSYBOX, ROOT, Lab, open_lab

pytestmark = needs_root

CGROUP_PARENT = f"/cri-py-tests/{secrets.token_hex(4)}"
# CAP_CHOWN (0) and CAP_KILL (5): the handler's whole starting set.
HANDLER_CAPABILITIES = (1 << 0) | (1 << 5)


def lab_config(cdi_dirs: list[Path]) -> str:
    dirs = ", ".join(json.dumps(str(d)) for d in cdi_dirs)
    return (
        (ROOT / "e2e" / "lab-config.yaml").read_text()
        + "network:\n  bridge: cri-pytcdi\n  subnet: 10.71.0.0/24\n  cni_conf_dir: /nonexistent\n"
        + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
        + f"cdi:\n  spec_dirs: [{dirs}]\n"
        # Overrides the lab's test-handler (a drop-in would too): a small capability set.
        + "runtimes:\n  test-handler:\n    default_seccomp_profile: runtime/default\n"
        + "    default_capabilities: [CAP_CHOWN, CAP_KILL]\n"
    )


@pytest.fixture(scope="module")
def cdi_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    base = tmp_path_factory.mktemp("cdi")
    etc, run = base / "etc-cdi", base / "run-cdi"
    etc.mkdir()
    run.mkdir()
    # A node like /dev/null (1:3) under a new name, and a directory to bind.
    node = base / "cdi-null"
    os.mknod(node, 0o600 | 0o020000, os.makedev(1, 3))
    share = base / "share"
    share.mkdir()
    (share / "hello").write_text("from the host\n")
    spec = {
        "cdiVersion": "0.6.0",
        "kind": "example.com/test",
        "containerEdits": {"env": ["CDI_SPEC_WIDE=yes"]},
        "devices": [
            {
                "name": "dev0",
                "containerEdits": {
                    "env": ["CDI_DEVICE=dev0"],
                    "deviceNodes": [
                        {"path": "/dev/cdi-null", "hostPath": str(node), "permissions": "rw"},
                        # No type or numbers: taken from the host's node (10:237).
                        {"path": "/dev/loop-control"},
                    ],
                    "mounts": [
                        {
                            "hostPath": str(share),
                            "containerPath": "/cdi-share",
                            "options": ["ro", "nosuid", "bind"],
                        }
                    ],
                },
            }
        ],
    }
    # The later dir wins: /etc's definition of dev0 says otherwise, and loses.
    (etc / "example.json").write_text(
        json.dumps(
            {
                "cdiVersion": "0.3.0",
                "kind": "example.com/test",
                "devices": [
                    {"name": "dev0", "containerEdits": {"env": ["CDI_DEVICE=from-etc"]}},
                ],
            }
        )
    )
    (etc / "json.json").write_text(
        json.dumps(
            {
                "cdiVersion": "0.5.0",
                "kind": "example.com/json",
                "devices": [{"name": "1st", "containerEdits": {"env": ["JSON_ONE=1"]}}],
            }
        )
    )
    (run / "example.yaml").write_text(yaml.safe_dump(spec))
    with open_lab(base, lab_config([etc, run]), cgroup_parent=CGROUP_PARENT) as lab:
        yield lab, base


def create(
    lab: Lab,
    sandbox_id: str,
    name: str,
    cdi: Sequence[str] = (),
    annotations: dict[str, str] | None = None,
) -> str:
    request = pb.CreateContainerRequest(
        pod_sandbox_id=sandbox_id,
        config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=BUSYBOX),
            command=["sleep", "3600"],
            log_path=f"{name}.log",
            annotations=annotations or {},
            CDI_devices=[pb.CDIDevice(name=n) for n in cdi],
        ),
        sandbox_config=lab.configs[sandbox_id],
    )
    return lab.daemon.runtime().CreateContainer(request, timeout=30).container_id


def output(lab: Lab, container_id: str, script: str) -> str:
    result = lab.exec(container_id, "sh", "-c", script)
    assert result.exit_code == 0, result.stderr.decode()
    return result.stdout.decode()


def test_cdi_device_node_mount_and_env_reach_the_container(cdi_lab: tuple[Lab, Path]) -> None:
    lab, _ = cdi_lab
    sandbox_id = lab.run_pod("cdi-pod")
    container_id = create(
        lab,
        sandbox_id,
        "gpu",
        ["example.com/test=dev0"],
        {"cdi.k8s.io/json_1st": "example.com/json=1st"},
    )
    lab.start(container_id)
    # The device node, with the host's numbers, usable (its cgroup rule was written).
    assert output(lab, container_id, "stat -c '%t:%T %F' /dev/cdi-null") == (
        "1:3 character special file\n"
    )
    assert output(lab, container_id, "echo x > /dev/cdi-null && echo wrote") == "wrote\n"
    assert output(lab, container_id, "stat -c '%t:%T' /dev/loop-control") == "a:ed\n"
    assert output(lab, container_id, ": <> /dev/loop-control && echo opened") == "opened\n"
    # The mount, read-only.
    assert output(lab, container_id, "cat /cdi-share/hello") == "from the host\n"
    denied = lab.exec(container_id, "sh", "-c", "touch /cdi-share/new")
    assert denied.exit_code != 0 and b"Read-only file system" in denied.stderr
    # The env of the container's process: spec-wide, device, the annotation's device; the
    # later spec dir's definition of dev0, not /etc's.
    environ = output(lab, container_id, "tr '\\0' '\\n' < /proc/1/environ").splitlines()
    assert {"CDI_SPEC_WIDE=yes", "CDI_DEVICE=dev0", "JSON_ONE=1"} <= set(environ)
    spec = json.loads(
        (lab.daemon.root_dir / "containers" / container_id / "config.json").read_text()
    )
    rules = spec["linux"]["resources"]["devices"]
    assert {"allow": True, "type": "c", "major": 10, "minor": 237, "access": "rwm"} in rules
    # Without the device the path is not there.
    plain = create(lab, sandbox_id, "plain")
    lab.start(plain)
    assert lab.exec(plain, "ls", "/dev/cdi-null").exit_code != 0


def test_unknown_cdi_device_fails_create_and_leaves_nothing(cdi_lab: tuple[Lab, Path]) -> None:
    lab, _ = cdi_lab
    sandbox_id = lab.run_pod("cdi-unknown")
    before = set(os.listdir(lab.daemon.root_dir / "containers"))
    with pytest.raises(grpc.RpcError) as raised:
        create(lab, sandbox_id, "nope", ["example.com/test=nope"])
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CDI device example.com/test=nope is not defined" in str(raised.value.details())
    with pytest.raises(grpc.RpcError) as raised:
        create(lab, sandbox_id, "bad", ["not-qualified"])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = lab.daemon.runtime().ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sandbox_id)), timeout=10
    )
    assert list(listed.containers) == []
    assert set(os.listdir(lab.daemon.root_dir / "containers")) == before
    # The name was released: the same name works once the device is one that exists.
    container_id = create(lab, sandbox_id, "nope", ["example.com/test=dev0"])
    assert container_id


def test_a_spec_written_later_is_read_at_the_next_create(cdi_lab: tuple[Lab, Path]) -> None:
    lab, base = cdi_lab
    sandbox_id = lab.run_pod("cdi-later")
    spec = {
        "cdiVersion": "0.6.0",
        "kind": "example.com/late",
        "devices": [{"name": "x", "containerEdits": {"env": ["LATE=1"]}}],
    }
    (base / "run-cdi" / "late.json").write_text(json.dumps(spec))
    container_id = create(lab, sandbox_id, "late", ["example.com/late=x"])
    lab.start(container_id)
    assert "LATE=1" in output(lab, container_id, "tr '\\0' '\\n' < /proc/1/environ")
    # A broken file is named when its device is asked for.
    (base / "run-cdi" / "late.json").write_text(
        '{"cdiVersion": "0.6.0", "kind": "example.com/late"'
    )
    with pytest.raises(grpc.RpcError) as raised:
        create(lab, sandbox_id, "late2", ["example.com/late=x"])
    assert "late.json" in str(raised.value.details())


def status_of(lab: Lab, container_id: str) -> dict[str, str]:
    lines = output(lab, container_id, "cat /proc/self/status").splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_test_handler_pod_runs_with_its_settings_across_a_restart(
    cdi_lab: tuple[Lab, Path],
) -> None:
    lab, base = cdi_lab
    rt = lab.daemon.runtime()
    handlers = {h.name for h in rt.Status(pb.StatusRequest(), timeout=10).runtime_handlers}
    assert handlers == {"", "test-handler"}
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="handled", uid="uid-handled", namespace="test"),
        log_directory=str(lab.logs / "handled"),
    )
    with pytest.raises(grpc.RpcError) as raised:
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler="nope"), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "runtime handler 'nope' is not configured" in str(raised.value.details())
    sandbox_id = rt.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config, runtime_handler="test-handler"), timeout=30
    ).pod_sandbox_id
    lab.pods.append(sandbox_id)
    lab.configs[sandbox_id] = config
    status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10)
    assert status.status.runtime_handler == "test-handler"
    handled = create(lab, sandbox_id, "handled")
    lab.start(handled)
    seen = status_of(lab, handled)
    assert seen["Seccomp"] == "2"
    assert int(seen["CapBnd"], 16) == HANDLER_CAPABILITIES
    # The default handler's pod: no filter (the CRI's unset), the default set.
    default_pod = lab.run_pod("unhandled")
    plain = create(lab, default_pod, "plain")
    lab.start(plain)
    seen = status_of(lab, plain)
    assert seen["Seccomp"] == "0"
    assert int(seen["CapBnd"], 16) not in (0, HANDLER_CAPABILITIES)
    # A restarted daemon still knows the pod's handler and applies it to new containers.
    lab.daemon.stop()
    lab.daemon = start_daemon(base / "daemon", lab_config([base / "etc-cdi", base / "run-cdi"]))
    after = create(lab, sandbox_id, "after-restart")
    lab.start(after)
    seen = status_of(lab, after)
    assert seen["Seccomp"] == "2"
    assert int(seen["CapBnd"], 16) == HANDLER_CAPABILITIES
