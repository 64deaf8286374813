"""Pods with their own users (`hostUsers: false`) against a real daemon: the pod-wide user
namespace and its mappings, root inside being an unprivileged host ID, the image's files owned
by root inside (idmapped layers), what the container writes, idmapped volumes, the pod's
namespaces owned by its user namespace, and the invalid requests refused with nothing made.

Pods run on the bridge `cri-pyu0` (10.81.0.0/24); skips like test_containers.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb

from .conftest import needs_root
from .test_containers import BUSYBOX, ROOT, Lab, open_lab

pytestmark = needs_root

CGROUP_PARENT = f"/cri-py-tests/{secrets.token_hex(4)}"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyu0\n  subnet: 10.81.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)
# A range no host user has: container ID n is host ID HOST_ID + n.
HOST_ID = 1_200_000
LENGTH = 65536
MAPPING = [pb.IDMapping(container_id=0, host_id=HOST_ID, length=LENGTH)]
NOBODY = 65534
# <linux/nsfs.h>: NS_GET_USERNS, an fd of the user namespace owning a namespace.
NS_GET_USERNS = 0xB701


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("userns"), CONFIG) as opened:
        features = opened.daemon.runtime().Status(pb.StatusRequest(), timeout=30)
        if not features.runtime_handlers[0].features.user_namespaces:
            pytest.fail("the daemon does not advertise user_namespaces; see its log for why")
        yield opened


def user_options(
    mode: int = pb.POD, mappings: list[pb.IDMapping] | None = None
) -> pb.UserNamespace:
    chosen = MAPPING if mappings is None else mappings
    return pb.UserNamespace(mode=mode, uids=chosen, gids=chosen)  # type: ignore[arg-type]


def pod_config(
    lab: Lab, name: str, users: pb.UserNamespace, sysctls: dict[str, str] | None = None
) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="userns"),
        hostname=f"{name}-host",
        log_directory=str(lab.logs / name),
        linux=pb.LinuxPodSandboxConfig(
            sysctls=sysctls or {},
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(userns_options=users)
            ),
        ),
    )


def run_pod(
    lab: Lab, name: str, users: pb.UserNamespace, sysctls: dict[str, str] | None = None
) -> str:
    return lab.run_config(pod_config(lab, name, users, sysctls))


def create(
    lab: Lab,
    pod: str,
    name: str,
    command: list[str],
    mounts: list[pb.Mount] | None = None,
    users: pb.UserNamespace | None = None,
) -> str:
    options = pb.NamespaceOption(userns_options=users) if users else pb.NamespaceOption()
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=command,
        log_path=f"{name}.log",
        mounts=mounts or [],
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(namespace_options=options)
        ),
    )
    return (
        lab.daemon.runtime()
        .CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=config, sandbox_config=lab.configs[pod]
            ),
            timeout=30,
        )
        .container_id
    )


def output(lab: Lab, container_id: str, *cmd: str) -> str:
    response = lab.exec(container_id, *cmd)
    assert response.exit_code == 0, response.stderr.decode()
    return response.stdout.decode().strip()


def container_pid(lab: Lab, container_id: str) -> int:
    status = lab.daemon.runtime().ContainerStatus(
        pb.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=10
    )
    return int(json.loads(status.info["info"])["pid"])


def host_ids(pid: int, key: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def owning_userns(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            info = os.fstat(owner)
            return info.st_dev, info.st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)


def test_pod_user_namespace_maps_root_to_an_unprivileged_host_id(lab: Lab, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "from-host").write_text("host")  # owned by the host's root
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "from-host").write_text("host")
    # A network and an IPC sysctl: written by the shim into namespaces the pod's users own.
    sysctls = {"net.ipv4.ip_local_port_range": "40000 50000", "kernel.shmmni": "1234"}
    pod = run_pod(lab, "own-users", user_options(), sysctls)
    mounts = [
        pb.Mount(container_path="/idmapped", host_path=str(volume), uidMappings=MAPPING,
                 gidMappings=MAPPING),
        pb.Mount(container_path="/plain", host_path=str(plain)),
        pb.Mount(container_path="/image", image=pb.ImageSpec(image=BUSYBOX), readonly=True,
                 uidMappings=MAPPING, gidMappings=MAPPING),
        pb.Mount(container_path="/image-etc", image=pb.ImageSpec(image=BUSYBOX), readonly=True,
                 image_sub_path="etc"),
    ]  # fmt: skip
    cid = create(lab, pod, "app", ["sh", "-c", "touch /created; sleep 300"], mounts, user_options())
    lab.start(cid)

    # Inside: root, with the pod's mapping.
    assert output(lab, cid, "cat", "/proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    assert output(lab, cid, "cat", "/proc/self/gid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    assert output(lab, cid, "id", "-u") == "0"
    assert lab.status(cid).user.linux.uid == 0
    # Outside: the container's process is the mapped host ID, not root.
    pid = container_pid(lab, cid)
    assert host_ids(pid, "Uid") == [HOST_ID] * 4
    assert host_ids(pid, "Gid") == [HOST_ID] * 4

    # The image's files (owned by 0 on disk) are root's inside, through the idmapped layers.
    assert (
        output(lab, cid, "stat", "-c", "%u:%g", "/bin/busybox", "/etc/passwd", "/").split()
        == ["0:0"] * 3
    )
    # What the container writes is stored with its host ID (the upper dir is not idmapped).
    upper = lab.daemon.root_dir / "containers" / cid / "upper"
    assert (upper / "created").stat().st_uid == HOST_ID
    assert output(lab, cid, "stat", "-c", "%u", "/created") == "0"

    # An idmapped volume: the host's root files are root's inside, and the container's root
    # writes files the host sees as its own root's; a plain volume shows them as nobody.
    assert output(lab, cid, "stat", "-c", "%u", "/idmapped/from-host") == "0"
    output(lab, cid, "touch", "/idmapped/from-container")
    assert (volume / "from-container").stat().st_uid == 0
    assert output(lab, cid, "stat", "-c", "%u", "/plain/from-host") == str(NOBODY)
    # Image volumes are overlays too: their layers are idmapped like the rootfs's.
    assert (
        output(lab, cid, "stat", "-c", "%u:%g", "/image/bin/busybox", "/image-etc/passwd").split()
        == ["0:0"] * 2
    )

    # The pod's network, IPC and UTS namespaces belong to its user namespace (root inside may
    # use what they govern, e.g. binding port 80), and the container is in it.
    pins = lab.daemon.run_dir / "sandboxes" / pod / "ns"
    user_pin = os.stat(pins / "user")
    for kind in ("net", "ipc", "uts"):
        assert owning_userns(str(pins / kind)) == (user_pin.st_dev, user_pin.st_ino), kind
    container_userns = os.stat(f"/proc/{pid}/ns/user")
    assert (container_userns.st_dev, container_userns.st_ino) == (user_pin.st_dev, user_pin.st_ino)
    assert lab.exec(cid, "sh", "-c", "nc -l -p 80 & sleep 0.3; kill $!").exit_code == 0
    assert output(lab, cid, "cat", "/proc/sys/net/ipv4/ip_local_port_range").split() == [
        "40000",
        "50000",
    ]
    assert output(lab, cid, "cat", "/proc/sys/kernel/shmmni") == "1234"
    mounts = {m.container_path: m for m in lab.status(cid).mounts}
    assert list(mounts["/idmapped"].uidMappings) == MAPPING
    assert not mounts["/plain"].uidMappings

    # PodSandboxStatus reports the mode and mappings.
    status = lab.daemon.runtime().PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=10
    )
    users = status.status.linux.namespaces.options.userns_options
    assert users.mode == pb.POD
    assert [(m.container_id, m.host_id, m.length) for m in users.uids] == [(0, HOST_ID, LENGTH)]
    lab.remove_pod(pod)
    assert not (pins / "user").exists()


def test_container_of_a_host_users_pod_is_still_host_root(lab: Lab) -> None:
    pod = run_pod(lab, "host-users", pb.UserNamespace(mode=pb.NODE))
    cid = create(lab, pod, "app", ["sleep", "300"])
    lab.start(cid)
    assert output(lab, cid, "cat", "/proc/self/uid_map").split() == ["0", "0", "4294967295"]
    assert host_ids(container_pid(lab, cid), "Uid") == [0] * 4
    lab.remove_pod(pod)


@pytest.mark.parametrize(
    "users",
    [
        user_options(mappings=[*MAPPING, pb.IDMapping(container_id=0, host_id=2000, length=10)]),
        user_options(mappings=[pb.IDMapping(container_id=1, host_id=HOST_ID, length=LENGTH)]),
        user_options(mappings=[pb.IDMapping(container_id=0, host_id=0, length=LENGTH)]),
        pb.UserNamespace(mode=pb.CONTAINER),
        pb.UserNamespace(mode=pb.TARGET),
        pb.UserNamespace(mode=pb.POD),
        pb.UserNamespace(mode=pb.NODE, uids=MAPPING, gids=MAPPING),
    ],
    ids=["two-mappings", "root-unmapped", "host-root", "container", "target", "no-mappings",
         "node-with-mappings"],
)  # fmt: skip
def test_invalid_user_namespace_is_refused_and_creates_nothing(
    lab: Lab, users: pb.UserNamespace
) -> None:
    before = set(lab.leftovers())
    with pytest.raises(grpc.RpcError) as caught:
        lab.daemon.runtime().RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod_config(lab, "invalid", users)), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(lab.leftovers()) == before
    listed = lab.daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10)
    assert "invalid" not in {item.metadata.name for item in listed.items}


def test_container_cannot_ask_for_other_users_than_its_pods(lab: Lab) -> None:
    pod = run_pod(lab, "mismatch", user_options())
    other = [pb.IDMapping(container_id=0, host_id=HOST_ID + LENGTH, length=LENGTH)]
    for users in (pb.UserNamespace(mode=pb.NODE), user_options(mappings=other)):
        with pytest.raises(grpc.RpcError) as caught:
            create(lab, pod, "app", ["true"], users=users)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    lab.remove_pod(pod)


def test_probe_names_the_failing_step_on_a_filesystem_without_idmapped_mounts(
    tmp_path: Path,
) -> None:
    """An overlay cannot be idmapped itself (EINVAL): layers unpacked on one could not be."""
    from cri_py.linux import features, syscalls

    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    options = f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work"
    syscalls.mount("overlay", tmp_path / "merged", "overlay", 0, options)
    try:
        problem = features.user_namespaces_problem(str(tmp_path / "merged"))
    finally:
        syscalls.umount2(tmp_path / "merged", syscalls.MNT_DETACH)
    assert "mount_setattr(MOUNT_ATTR_IDMAP)" in problem
    assert "Invalid argument" in problem
    assert features.user_namespaces_problem(str(tmp_path)) == ""
