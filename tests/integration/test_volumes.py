"""Image volumes, recursive read-only mounts and CRI devices against a real daemon.

Shares test_containers' lab (its daemon config, bridge and registry); skips the same way.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb

from .conftest import needs_root
from .test_containers import BUSYBOX, Lab
from .test_containers import lab as lab

pytestmark = needs_root


def create(lab: Lab, sandbox_id: str, name: str, **fields: object) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=["sleep", "3600"],
        log_path=f"{name}.log",
        **fields,  # type: ignore[arg-type]
    )
    return (
        lab.daemon.runtime()
        .CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=lab.configs[sandbox_id]
            ),
            timeout=30,
        )
        .container_id
    )


def image_id(lab: Lab) -> str:
    return str(
        lab.daemon.images()
        .ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=10)
        .image.id
    )


def test_image_volume_is_the_image_read_only_and_reports_its_id(lab: Lab) -> None:
    pod = lab.run_pod("image-volume")
    volume = pb.Mount(container_path="/mnt/image", readonly=True, image=pb.ImageSpec(image=BUSYBOX))
    cid = create(lab, pod, "whole", mounts=[volume])
    lab.start(cid)
    assert lab.exec(cid, "/mnt/image/bin/ls", "/mnt/image/etc/passwd").exit_code == 0
    assert lab.exec(cid, "touch", "/mnt/image/new").exit_code != 0
    (mount,) = [m for m in lab.status(cid).mounts if m.container_path == "/mnt/image"]
    assert mount.image.image == BUSYBOX
    assert mount.image.image_ref == image_id(lab)


def test_image_volume_sub_path_shows_only_that_directory(lab: Lab) -> None:
    pod = lab.run_pod("image-subpath")
    volume = pb.Mount(
        container_path="/mnt/etc",
        readonly=True,
        image=pb.ImageSpec(image=BUSYBOX),
        image_sub_path="etc",
    )
    cid = create(lab, pod, "subpath", mounts=[volume])
    lab.start(cid)
    result = lab.exec(cid, "ls", "/mnt/etc")
    assert result.exit_code == 0, result.stderr
    assert lab.exec(cid, "ls", "/mnt/etc/passwd").exit_code == 0
    assert lab.exec(cid, "ls", "/mnt/etc/etc").exit_code != 0


def test_image_volume_refusals(lab: Lab) -> None:
    pod = lab.run_pod("image-volume-refused")
    busybox, missing = pb.ImageSpec(image=BUSYBOX), pb.ImageSpec(image="example.test/none:1")
    cases = [
        (pb.Mount(container_path="/a", readonly=False, image=busybox), "read-only"),
        (
            pb.Mount(container_path="/a", readonly=True, image=busybox, image_sub_path="nope"),
            "does not exist",
        ),
        (pb.Mount(container_path="/a", readonly=True, image=missing), "pull it first"),
    ]
    for index, (mount, reason) in enumerate(cases):
        with pytest.raises(grpc.RpcError) as error:
            create(lab, pod, f"refused-{index}", mounts=[mount])
        assert reason in str(error.value.details())


@pytest.fixture
def nested_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A host dir with a tmpfs mounted inside it (a submount a plain ro bind leaves writable)."""
    (tmp_path / "sub").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "sub")], check=True)
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "sub")], check=False)


def test_recursive_read_only_covers_submounts(lab: Lab, nested_tmpfs: Path) -> None:
    pod = lab.run_pod("rro")
    plain = pb.Mount(container_path="/plain", host_path=str(nested_tmpfs), readonly=True)
    recursive = pb.Mount(
        container_path="/rro", host_path=str(nested_tmpfs), readonly=True, recursive_read_only=True
    )
    cid = create(lab, pod, "rro", mounts=[plain, recursive])
    lab.start(cid)
    assert lab.exec(cid, "touch", "/plain/sub/x").exit_code == 0
    assert lab.exec(cid, "touch", "/rro/sub/y").exit_code != 0
    assert lab.exec(cid, "touch", "/rro/z").exit_code != 0
    writable = pb.Mount(
        container_path="/rro", host_path=str(nested_tmpfs), recursive_read_only=True
    )
    with pytest.raises(grpc.RpcError) as error:
        create(lab, pod, "rro-rw", mounts=[writable])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_devices_are_created_and_allowed(lab: Lab) -> None:
    pod = lab.run_pod("devices")
    device = pb.Device(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")
    cid = create(lab, pod, "devices", devices=[device])
    lab.start(cid)
    result = lab.exec(cid, "sh", "-c", "echo hi > /dev/mynull && ls -l /dev/mynull")
    assert result.exit_code == 0, result.stderr
    host = os.stat("/dev/null")
    assert f"{os.major(host.st_rdev)},".encode() in result.stdout
    # A node it may make (CAP_MKNOD, cgroup "m") but not use: /dev/mem is not allowed.
    denied = lab.exec(cid, "sh", "-c", "mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem")
    assert denied.exit_code != 0
    assert b"not permitted" in denied.stderr.lower()
    with contextlib.suppress(grpc.RpcError):
        lab.remove_pod(pod)


def test_a_privileged_container_gets_the_hosts_devices(lab: Lab) -> None:
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="privileged-devices", uid="uid-pd", namespace="test"),
        log_directory=str(lab.logs / "privileged-devices"),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(privileged=True)
        ),
    )
    pod = lab.run_config(config)
    context = pb.LinuxContainerSecurityContext(privileged=True)
    cid = create(lab, pod, "privileged", linux=pb.LinuxContainerConfig(security_context=context))
    lab.start(cid)
    host_devices = {name for name in os.listdir("/dev") if name.startswith("loop")}
    listed = set(lab.exec(cid, "ls", "/dev").stdout.decode().split())
    assert host_devices <= listed
    # The pty master is still the container's own devpts one.
    assert lab.exec(cid, "readlink", "/dev/ptmx").stdout.strip() == b"pts/ptmx"
