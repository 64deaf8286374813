"""Rootfs-level paths the launcher creates through links an image or a volume planted: device
nodes of the CRI's `devices` and mount points of nested volumes are made by descriptor inside
the rootfs, where the link resolves when / is the rootfs, never in the host dir it names.
(The wider attack corpus, symlinked /dev, /proc and /sys included, is test_isolation's.)
Pods run on the test bridge `cri-pyt3` (10.73.0.0/24).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.mountinfo import mount_points

from . import hostile_images as hostile
from .conftest import needs_root
from .test_containers import BUSYBOX, ROOT, Lab, open_lab

pytestmark = needs_root

CGROUP_PARENT = f"/cri-py-tests/rootfs-{secrets.token_hex(4)}"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyt3\n  subnet: 10.73.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not hostile.registry_up():
        pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")
    with open_lab(tmp_path_factory.mktemp("rootfs"), CONFIG, cgroup_parent=CGROUP_PARENT) as opened:
        yield opened


@contextlib.contextmanager
def pod(lab: Lab, name: str, privileged: bool = False) -> Iterator[str]:
    sandbox_id = lab.run_pod(f"{name}-{secrets.token_hex(2)}", privileged=privileged)
    try:
        yield sandbox_id
    finally:
        with contextlib.suppress(grpc.RpcError):
            lab.remove_pod(sandbox_id)
        lab.pods.remove(sandbox_id)


def run(lab: Lab, sandbox_id: str, config: pb.ContainerConfig) -> str:
    rt = lab.daemon.runtime()
    container_id = rt.CreateContainer(
        pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=lab.configs[sandbox_id]
        ),
        timeout=60,
    ).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)
    return container_id


def assert_untouched(path: Path, expected: tuple[str, ...] = ()) -> None:
    assert sorted(os.listdir(path)) == sorted(expected), f"written on the host in {path}"
    text = Path("/proc/self/mountinfo").read_text() + Path("/proc/1/mountinfo").read_text()
    prefix = str(path)
    assert not [m for m in mount_points(text) if m == prefix or m.startswith(prefix + "/")]


def assert_nothing_left(lab: Lab) -> None:
    deadline = time.monotonic() + 10
    while (left := lab.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"left after removing the pod: {left}"


def test_a_device_node_through_an_image_link_is_made_inside_the_rootfs(
    lab: Lab, tmp_path: Path
) -> None:
    aim = tmp_path / "aim"
    aim.mkdir()
    image = hostile.push_image("device-through-link", [hostile.symlink("opt/devs", str(aim))])
    lab.daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=120)
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="devlink"),
        image=pb.ImageSpec(image=image),
        command=["sleep", "3600"],
        devices=[
            pb.Device(container_path="/opt/devs/mynull", host_path="/dev/null", permissions="rwm")
        ],
        log_path="devlink.log",
    )
    with pod(lab, "devlink") as sandbox:
        cid = run(lab, sandbox, config)
        assert_untouched(aim)
        # Inside, the link resolves as the launcher resolved it: to the node it made.
        shown = lab.exec(cid, "stat", "-L", "-c", "%F %t:%T", "/opt/devs/mynull")
        assert shown.stdout == b"character special file 1:3\n", shown
        inside = lab.exec(cid, "stat", "-c", "%F", str(aim / "mynull"))
        assert inside.stdout == b"character special file\n", inside
    assert_untouched(aim)
    assert_nothing_left(lab)


def test_a_nested_volume_through_a_link_in_a_volume_lands_inside_the_rootfs(
    lab: Lab, tmp_path: Path
) -> None:
    """A sibling sharing the outer volume planted `link -> <host dir>`: the inner volume's
    mount point is made, and the volume mounted, where the link leads inside the rootfs."""
    aim = tmp_path / "aim"
    aim.mkdir()
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "link").symlink_to(aim)
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "marker").write_text("inner\n")
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="nested"),
        image=pb.ImageSpec(image=BUSYBOX),
        command=["sleep", "3600"],
        mounts=[
            pb.Mount(container_path="/outer", host_path=str(outer)),
            pb.Mount(container_path="/outer/link/inner", host_path=str(inner)),
        ],
        log_path="nested.log",
    )
    with pod(lab, "nested") as sandbox:
        cid = run(lab, sandbox, config)
        assert_untouched(aim)
        assert sorted(os.listdir(outer)) == ["link"]
        assert lab.exec(cid, "cat", "/outer/link/inner/marker").stdout == b"inner\n"
        assert lab.exec(cid, "cat", str(aim / "inner" / "marker")).stdout == b"inner\n"
    assert_untouched(aim)
    assert sorted(os.listdir(inner)) == ["marker"]
    assert_nothing_left(lab)


@contextlib.contextmanager
def shared_dir(path: Path) -> Iterator[Path]:
    """`path` made a shared mount of its own on the host (bind over itself), as kubelet's
    volume dirs are; everything under it unmounted on the way out."""
    path.mkdir()
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-R", "-l", str(path)], check=False)


def test_volume_propagation_survives_binding_by_descriptor(lab: Lab, tmp_path: Path) -> None:
    """Volumes are attached as detached clones (open_tree + move_mount onto the mount point's
    descriptor): HOST_TO_CONTAINER still sees what the host mounts later, BIDIRECTIONAL still
    shows the host what the container mounts, PRIVATE neither."""
    with (
        shared_dir(tmp_path / "h2c") as h2c,
        shared_dir(tmp_path / "bidi") as bidi,
        shared_dir(tmp_path / "private") as private,
    ):
        sandbox_id = lab.run_pod(f"prop-{secrets.token_hex(2)}", 0, privileged=True)
        try:
            config = pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="prop"),
                image=pb.ImageSpec(image=BUSYBOX),
                command=["sleep", "3600"],
                mounts=[
                    pb.Mount(
                        container_path="/h2c",
                        host_path=str(h2c),
                        propagation=pb.PROPAGATION_HOST_TO_CONTAINER,
                    ),
                    pb.Mount(
                        container_path="/bidi",
                        host_path=str(bidi),
                        propagation=pb.PROPAGATION_BIDIRECTIONAL,
                    ),
                    pb.Mount(container_path="/private", host_path=str(private)),
                ],
                log_path="prop.log",
                linux=pb.LinuxContainerConfig(
                    security_context=pb.LinuxContainerSecurityContext(privileged=True)
                ),
            )
            cid = run(lab, sandbox_id, config)
            for host in (h2c, private):
                (host / "sub").mkdir()
                subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(host / "sub")], check=True)
                (host / "sub" / "marker").write_text("from-host\n")
            seen = lab.exec(cid, "cat", "/h2c/sub/marker")
            assert seen.stdout == b"from-host\n", seen
            assert lab.exec(cid, "ls", "/private/sub").stdout == b""
            made = lab.exec(
                cid,
                "sh",
                "-c",
                "mkdir /bidi/sub && mount -t tmpfs tmpfs /bidi/sub && "
                "echo from-container > /bidi/sub/marker",
            )
            assert made.exit_code == 0, made
            assert (bidi / "sub" / "marker").read_text() == "from-container\n"
        finally:
            with contextlib.suppress(grpc.RpcError):
                lab.remove_pod(sandbox_id)
            lab.pods.remove(sandbox_id)
    assert_nothing_left(lab)


def bidirectional(name: str, host: Path, command: list[str]) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=command,
        mounts=[
            pb.Mount(
                container_path="/mnt",
                host_path=str(host),
                propagation=pb.PROPAGATION_BIDIRECTIONAL,
            )
        ],
        log_path=f"{name}.log",
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(privileged=True)
        ),
    )


def test_a_mount_made_through_a_bidirectional_volume_outlives_its_container(
    lab: Lab, tmp_path: Path
) -> None:
    """kubelet's pattern (node e2e "should accept recursive read-only mounts"): one init
    container mounts a tmpfs in a Bidirectional volume and exits, a later one unmounts it. The
    mount lives on the host's side of the volume, not in the first container's namespace."""
    with shared_dir(tmp_path / "vol") as vol, pod(lab, "bidi", privileged=True) as sandbox:
        first = run(
            lab,
            sandbox,
            bidirectional(
                "mount", vol, ["sh", "-c", "mkdir -p /mnt/tmpfs && mount -t tmpfs none /mnt/tmpfs"]
            ),
        )
        assert lab.wait_exited(first).exit_code == 0
        assert str(vol / "tmpfs") in mount_points(Path("/proc/self/mountinfo").read_text())
        # Starting a container with a Bidirectional volume leaves the host's mounts alone:
        # its copy of the host's tree (detached after pivot_root) is a peer of the host's.
        bystander = run(lab, sandbox, bidirectional("bystander", vol, ["sleep", "3600"]))
        assert lab.exec(bystander, "cat", "/proc/self/mounts").stdout.count(b" /mnt/tmpfs ") == 1
        assert str(vol / "tmpfs") in mount_points(Path("/proc/self/mountinfo").read_text())
        second = run(lab, sandbox, bidirectional("unmount", vol, ["umount", "/mnt/tmpfs"]))
        assert lab.wait_exited(second).exit_code == 0
        assert str(vol / "tmpfs") not in mount_points(Path("/proc/self/mountinfo").read_text())
    assert_nothing_left(lab)


@pytest.mark.parametrize(
    ("propagation", "needs"),
    [
        (pb.PROPAGATION_BIDIRECTIONAL, "shared"),
        (pb.PROPAGATION_HOST_TO_CONTAINER, "shared or slave"),
    ],
)
def test_propagation_a_private_host_mount_cannot_carry_is_refused(
    lab: Lab, tmp_path: Path, propagation: int, needs: str
) -> None:
    """A volume on a private mount would silently behave as Private: CreateContainer fails
    with FAILED_PRECONDITION naming the mount, and no container is left."""
    host = tmp_path / "private"
    host.mkdir()
    subprocess.run(["mount", "--bind", str(host), str(host)], check=True)
    try:
        subprocess.run(["mount", "--make-rprivate", str(host)], check=True)
        config = bidirectional("refused", host, ["true"])
        config.mounts[0].propagation = propagation
        with pod(lab, "private", privileged=True) as sandbox:
            with pytest.raises(grpc.RpcError) as raised:
                run(lab, sandbox, config)
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"on a {needs} mount" in str(raised.value.details())
            assert str(host) in str(raised.value.details())
            listed = lab.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10)
            assert [c for c in listed.containers if c.pod_sandbox_id == sandbox] == []
    finally:
        subprocess.run(["umount", "-l", str(host)], check=False)
    assert_untouched(host)
    assert_nothing_left(lab)
