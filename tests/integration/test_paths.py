"""Path inputs cannot write or create outside where they belong: log_directory and log_path,
mount host and container paths (symlinks too), the seccomp Localhost profile, device paths,
sysctl names, pod and container names, and image references with traversal in them.

Each hostile input is refused with a clear status (INVALID_ARGUMENT, or NOT_FOUND for an
image that cannot exist) or contained; the filesystem is checked afterwards. Cases already
covered elsewhere are not repeated: a relative seccomp path (test_security), malformed sysctl
names and bad image sub paths (unit tests). The daemon runs on bridge `cri-pyz1`
(10.80.0.0/24) and pulls only from the lab registry.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb

from .conftest import needs_root
from .test_containers import BUSYBOX, ROOT, Lab, open_lab

pytestmark = needs_root

CGROUP_PARENT = f"/cri-py-tests/paths-{secrets.token_hex(4)}"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyz1\n  subnet: 10.80.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)
# Pulls of names that are not the lab's go to a proxy nobody listens on (they fail at once).
OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("paths")
    with open_lab(base, CONFIG, env=OFFLINE_ENV, cgroup_parent=CGROUP_PARENT) as opened:
        yield opened


@pytest.fixture
def pod(lab: Lab) -> Iterator[str]:
    sandbox_id = lab.run_pod(f"paths-{secrets.token_hex(3)}")
    yield sandbox_id
    lab.remove_pod(sandbox_id)
    lab.pods.remove(sandbox_id)


def code_of(call: object) -> grpc.StatusCode:
    """The status a call ends with (OK when it returns)."""
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def create(lab: Lab, sandbox_id: str, name: str, **fields: object) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=["sleep", "1000"],
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


def refused(lab: Lab, sandbox_id: str, **fields: object) -> str:
    """Asserts CreateContainer refuses `fields` with INVALID_ARGUMENT; returns the message."""
    with pytest.raises(grpc.RpcError) as caught:
        create(lab, sandbox_id, f"bad-{secrets.token_hex(3)}", **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value.details() or ""


def test_log_directory_must_be_absolute_and_clean(lab: Lab, tmp_path: Path) -> None:
    rt = lab.daemon.runtime()
    for log_directory in ("relative/logs", f"{tmp_path}/a/../../escape-dir"):
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="logdir", uid="u", namespace="test"),
            log_directory=log_directory,
        )
        with pytest.raises(grpc.RpcError) as caught:
            rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "log directory" in (caught.value.details() or "")
    assert not (tmp_path.parent / "escape-dir").exists()
    assert not Path("relative").exists()
    assert rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []


def test_log_path_cannot_leave_the_pods_log_directory(lab: Lab, pod: str) -> None:
    log_dir = Path(lab.configs[pod].log_directory)
    outside = log_dir.parent / "escape.log"
    for log_path in ("../escape.log", "sub/../../escape.log", str(outside), "x\x00.log"):
        assert "log path" in refused(lab, pod, log_path=log_path)
    assert not outside.exists()
    assert lab.daemon.runtime().ListContainers(pb.ListContainersRequest()).containers == []
    # A subdirectory (kubelet's <container>/<restart>.log) is fine, and lands inside.
    cid = create(lab, pod, "sub", log_path="sub/0.log")
    assert lab.status(cid).log_path == str(log_dir / "sub" / "0.log")
    assert (log_dir / "sub" / "0.log").exists()


def test_mount_host_paths_are_never_created(lab: Lab, pod: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "dir"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "link-target")
    for host_path in (str(missing), "relative/dir", str(dangling), f"{tmp_path}/\x00x"):
        mount = pb.Mount(container_path="/data", host_path=host_path)
        refused(lab, pod, mounts=[mount])
    assert not (tmp_path / "missing").exists()
    assert not (tmp_path / "link-target").exists()
    assert not Path("relative").exists()


def test_mount_through_a_symlink_binds_what_it_points_to_at_create(
    lab: Lab, pod: str, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "hello").write_text("from the target")
    link = tmp_path / "link"
    link.symlink_to(target)
    mount = pb.Mount(container_path="/data", host_path=str(link), readonly=True)
    cid = create(lab, pod, "symlinked", mounts=[mount])
    # Swapping the link after create does not change what the container gets.
    link.unlink()
    link.symlink_to("/etc")
    lab.start(cid)
    assert lab.exec(cid, "cat", "/data/hello").stdout == b"from the target"
    assert lab.exec(cid, "ls", "/data").stdout == b"hello\n"


def test_mount_container_paths_stay_inside_the_rootfs(lab: Lab, pod: str, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "marker").write_text("m")
    climb = "/.." * 20 + str(tmp_path / "escape-mount")
    mount = pb.Mount(container_path=climb, host_path=str(source), readonly=True)
    try:
        cid = create(lab, pod, "climber", mounts=[mount])
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        lab.start(cid)
        # Contained: the mount is at that path inside the container's own root.
        inside = lab.exec(cid, "cat", f"{tmp_path}/escape-mount/marker")
        assert inside.stdout == b"m"
    assert not (tmp_path / "escape-mount").exists()


def test_seccomp_localhost_profile_must_be_an_existing_regular_file(
    lab: Lab, pod: str, tmp_path: Path
) -> None:
    fifo = tmp_path / "profile.fifo"
    os.mkfifo(fifo)
    cases = {
        str(tmp_path / "missing.json"): "does not exist",
        str(tmp_path): "Is a directory",
        str(fifo): "not a regular file",  # opening it must not hang the create
        f"{tmp_path}/../{tmp_path.name}/missing.json": "without '..'",
    }
    for path, message in cases.items():
        security = pb.LinuxContainerSecurityContext(
            seccomp=pb.SecurityProfile(
                profile_type=pb.SecurityProfile.Localhost, localhost_ref=path
            )
        )
        started = time.monotonic()
        details = refused(lab, pod, linux=pb.LinuxContainerConfig(security_context=security))
        assert message in details, details
        assert time.monotonic() - started < 10
    assert not (tmp_path / "missing.json").exists()


def test_device_paths_are_checked_and_never_created(lab: Lab, pod: str, tmp_path: Path) -> None:
    cases = [
        pb.Device(host_path="/dev/../etc/passwd", container_path="/dev/x", permissions="rwm"),
        pb.Device(host_path=str(tmp_path / "nodev"), container_path="/dev/x", permissions="r"),
        pb.Device(host_path="dev/null", container_path="/dev/x", permissions="r"),
        pb.Device(
            host_path="/dev/null",
            container_path="/.." * 10 + str(tmp_path / "escape-node"),
            permissions="rwm",
        ),
        pb.Device(host_path="/dev/null", container_path="dev/relative", permissions="rw"),
    ]
    for device in cases:
        refused(lab, pod, devices=[device])
    assert not (tmp_path / "nodev").exists() and not (tmp_path / "escape-node").exists()
    assert Path("/etc/passwd").stat().st_size > 0


def test_sysctl_names_cannot_reach_other_proc_files(lab: Lab) -> None:
    rt = lab.daemon.runtime()
    before = Path("/proc/sys/kernel/pid_max").read_text()
    for name in ("kernel/../../x", "net.ipv4.../", "net/../kernel/pid_max", "net.core.somaxconn\n"):
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="sysctl", uid="u", namespace="test"),
            linux=pb.LinuxPodSandboxConfig(sysctls={name: "4194303"}),
        )
        with pytest.raises(grpc.RpcError) as caught:
            rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert Path("/proc/sys/kernel/pid_max").read_text() == before
    assert rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []


def test_names_with_slashes_and_dots_are_not_used_as_paths(lab: Lab, tmp_path: Path) -> None:
    """Pod and container names are metadata: IDs name the dirs, so a name like
    `../../escape` creates nothing anywhere (the daemon's dirs hold only IDs)."""
    rt = lab.daemon.runtime()
    hostile = "../../../../escape-name"
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=hostile, uid=hostile, namespace="../ns"),
        hostname="h",
        log_directory=str(tmp_path / "logs"),
    )
    sandbox_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    lab.pods.append(sandbox_id)
    lab.configs[sandbox_id] = config
    cid = create(lab, sandbox_id, hostile, log_path="c.log")
    lab.start(cid)
    assert lab.status(cid).metadata.name == hostile
    daemon_dirs = [
        lab.daemon.root_dir / "containers",
        lab.daemon.root_dir / "sandboxes",
        lab.daemon.run_dir / "sandboxes",
    ]
    for directory in daemon_dirs:
        assert {p.name for p in directory.iterdir()} <= {sandbox_id, cid}, directory
    # Where `../` runs from the daemon's, the logs' or the cgroup dirs could have landed.
    base = lab.daemon.root_dir.parent
    places = [Path(p) for p in ("/", "/tmp", "/run", "/var/lib", "/var/log", "/sys/fs/cgroup")]
    places += [base, base.parent, *tmp_path.parents, *(base / "root").rglob("*")]
    assert [p for p in places if (p / "escape-name").exists()] == []
    lab.remove_pod(sandbox_id)
    lab.pods.remove(sandbox_id)


def test_image_references_with_traversal_are_refused_and_touch_nothing(lab: Lab) -> None:
    images = lab.daemon.images()
    sentinel = lab.daemon.root_dir.parent / "sentinel"
    sentinel.write_text("keep")
    listed_before = images.ListImages(pb.ListImagesRequest()).images
    hostile = [
        "127.0.0.1:5000/../../etc/passwd",
        "registry.k8s.io/../../sentinel:tag",
        "busybox@sha256:../../../../sentinel",
        "sha256:../../../sentinel",
        "../../sentinel",
        "sha256:" + "../" * 8 + "sentinel",
        "busybox:../../x",
        "/etc/passwd",
    ]
    for ref in hostile:
        spec = pb.ImageSpec(image=ref)
        pull = code_of(lambda spec=spec: images.PullImage(pb.PullImageRequest(image=spec)))
        assert pull in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (ref, pull)
        status = code_of(lambda spec=spec: images.ImageStatus(pb.ImageStatusRequest(image=spec)))
        assert status in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (ref, status)
        remove = code_of(lambda spec=spec: images.RemoveImage(pb.RemoveImageRequest(image=spec)))
        assert remove in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (ref, remove)
    assert sentinel.read_text() == "keep"
    assert Path("/etc/passwd").stat().st_size > 0
    assert images.ListImages(pb.ListImagesRequest()).images == listed_before
