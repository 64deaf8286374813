"""Faults injected into a real daemon: a daemon or a shim SIGKILLed, a CNI plugin that fails
or hangs, a registry that drops a blob half-way, a full disk, a client that gives up on
RunPodSandbox. Each test ends with the leak checker finding nothing.

Pods run on the test bridge `cri-pyf1` (10.89.0.0/24); container cgroups go under
`/cri-py-tests/faults1`. Container tests pull busybox from the lab registry and skip without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml

from cri_py.api import api_pb2 as pb
from cri_py.config import Config, parse_layers
from cri_py.linux import syscalls
from cri_py.linux.cgroupfs import Cgroupfs
from cri_py.model.container import ContainerMetadata, ContainerRecord, ContainerState
from cri_py.model.sandbox import Phase
from cri_py.runtime.leaks import find_leaks
from cri_py.shim.client import ShimClient, ShimError
from cri_py.store.containers import ContainerStore
from cri_py.store.sandboxes import SandboxStore

from ..unit.network.fake_cni import install_fake_plugins
from .conftest import Daemon, needs_root, start_daemon

pytestmark = needs_root

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
BRIDGE = "cri-pyf1"
SUBNET = "10.89.0.0/24"
CGROUP_PARENT = "/cri-py-tests/faults1"
CRICTL = Path(os.environ.get("TOOLS_DIR", "/var/cache/cri-py/tools")) / "bin" / "crictl"


def lab_config(extra: str = "") -> str:
    return (
        (ROOT / "e2e" / "lab-config.yaml").read_text()
        + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
        + extra
    )


def network_config(cni_conf_dir: str = "/nonexistent", cni_bin_dir: str = "") -> str:
    bins = f"  cni_bin_dirs: [{cni_bin_dir}]\n  cni_timeout_seconds: 2\n" if cni_bin_dir else ""
    return (
        f"network:\n  bridge: {BRIDGE}\n  subnet: {SUBNET}\n  cni_conf_dir: {cni_conf_dir}\n" + bins
    )


def registry_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5000), 1):
        return True
    return False


def remove_cgroup_parent() -> None:
    fs = Cgroupfs.from_host()
    for directory in fs.dirs(CGROUP_PARENT):
        for top, dirs, _ in os.walk(directory, topdown=False):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(top, name))
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module", autouse=True)
def remove_bridge() -> Iterator[None]:
    """The module's bridge goes when its tests are done (it holds nothing by then)."""
    yield
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


@dataclass
class Lab:
    base: Path
    config_yaml: str
    daemon: Daemon
    pods: list[str] = field(default_factory=list)
    configs: dict[str, pb.PodSandboxConfig] = field(default_factory=dict)

    def config(self) -> Config:
        """The daemon's effective config, as `cri-py debug leaks` would load it."""
        return parse_layers(
            [
                ("test", yaml.safe_load(self.config_yaml)),
                (
                    "flags",
                    {
                        "root_dir": str(self.daemon.root_dir),
                        "run_dir": str(self.daemon.run_dir),
                        "socket": str(self.daemon.socket),
                    },
                ),
            ]
        )

    def leaks(self) -> list[str]:
        return [str(leak) for leak in find_leaks(self.config())]

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.daemon.stop(sig)
        self.daemon = start_daemon(self.daemon.root_dir.parent, self.config_yaml)

    def pull(self, image: str = BUSYBOX) -> None:
        self.daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), 120)

    def pod_config(self, name: str) -> pb.PodSandboxConfig:
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="faults"),
            hostname=name,
            log_directory=str(self.base / "logs" / name),
        )

    def run_pod(self, name: str, timeout: float = 30) -> str:
        config = self.pod_config(name)
        sandbox_id = (
            self.daemon.runtime()
            .RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=timeout)
            .pod_sandbox_id
        )
        self.pods.append(sandbox_id)
        self.configs[sandbox_id] = config
        return sandbox_id

    def pod_status(self, sandbox_id: str) -> pb.PodSandboxStatusResponse:
        return self.daemon.runtime().PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=10
        )

    def run_container(self, sandbox_id: str, name: str, script: str) -> str:
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=BUSYBOX),
            command=["sh", "-c", script],
            log_path=f"{name}.log",
        )
        runtime = self.daemon.runtime()
        container_id = runtime.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=self.configs[sandbox_id]
            ),
            timeout=30,
        ).container_id
        runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)
        return container_id

    def container(self, container_id: str) -> pb.ContainerStatus:
        return (
            self.daemon.runtime()
            .ContainerStatus(pb.ContainerStatusRequest(container_id=container_id), timeout=10)
            .status
        )

    def exec(self, container_id: str, *cmd: str) -> pb.ExecSyncResponse:
        return self.daemon.runtime().ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=10), timeout=20
        )

    def remove_pod(self, sandbox_id: str) -> None:
        runtime = self.daemon.runtime()
        runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        with contextlib.suppress(ValueError):
            self.pods.remove(sandbox_id)


@contextlib.contextmanager
def open_lab(
    base: Path, config_yaml: str, before_start: Callable[[Path], None] | None = None
) -> Iterator[Lab]:
    """A daemon under `base`; on the way out its pods are removed, the daemon stopped and the
    leak checker must find nothing (checked after the pods went, before the daemon stops)."""
    base.mkdir(parents=True, exist_ok=True)
    if before_start is not None:
        before_start(base / "daemon")
    lab = Lab(base, config_yaml, start_daemon(base / "daemon", config_yaml))
    leaks: list[str] = []
    try:
        yield lab
        for sandbox_id in list(lab.pods):
            lab.remove_pod(sandbox_id)
        leaks = lab.leaks()
    finally:
        for sandbox_id in list(lab.pods):
            with contextlib.suppress(grpc.RpcError):
                lab.remove_pod(sandbox_id)
        lab.daemon.stop()
        remove_cgroup_parent()
    assert leaks == [], leaks


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if not registry_up():
        pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")
    with open_lab(tmp_path, lab_config(network_config())) as opened:
        opened.pull()
        yield opened


# --- the daemon dies; pods and containers live on ------------------------------------------------

COUNTER = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"


def counter_lines(lab: Lab, sandbox_id: str) -> list[str]:
    log = Path(lab.configs[sandbox_id].log_directory) / "counter.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split(" ", 3)[3] for line in lines if line.count(" ") >= 3]


def crictl_ps(lab: Lab) -> set[str]:
    """Running container IDs as `crictl ps` shows them (our own RPC when crictl is absent)."""
    if CRICTL.exists():
        out = subprocess.run(
            [str(CRICTL), "--runtime-endpoint", lab.daemon.address, "ps", "-q", "--no-trunc"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return set(out.split())
    listed = lab.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10)
    return {c.id for c in listed.containers if c.state == pb.CONTAINER_RUNNING}


def test_sigkilled_daemon_keeps_containers_running_same_start_times_gapless_logs_and_exec(
    lab: Lab,
) -> None:
    pods = [lab.run_pod(f"keep-{i}") for i in range(2)]
    containers = {p: lab.run_container(p, "counter", COUNTER) for p in pods}
    wait_for(lambda: all(len(counter_lines(lab, p)) >= 5 for p in pods), what="counter output")
    before = {c: lab.container(c) for c in containers.values()}
    assert crictl_ps(lab) == set(containers.values())

    lab.daemon.stop(signal.SIGKILL)
    time.sleep(1.0)  # ~10 lines written while no daemon runs
    printed_while_down = {p: len(counter_lines(lab, p)) for p in pods}
    lab.restart()

    assert crictl_ps(lab) == set(containers.values())
    for container_id, old in before.items():
        now = lab.container(container_id)
        assert now.state == pb.CONTAINER_RUNNING
        assert (now.created_at, now.started_at) == (old.created_at, old.started_at)
        answer = lab.exec(container_id, "echo", "still here")
        assert (answer.exit_code, answer.stdout) == (0, b"still here\n")
    for sandbox_id in pods:
        assert lab.pod_status(sandbox_id).status.state == pb.SANDBOX_READY
        wanted = printed_while_down[sandbox_id] + 10
        wait_for(lambda: len(counter_lines(lab, sandbox_id)) >= wanted, what="output after restart")  # noqa: B023
        numbers = [int(n) for n in counter_lines(lab, sandbox_id)]
        assert numbers == list(range(len(numbers))), "the log has a gap or a repeat"


def test_sigkilled_shim_makes_the_pod_notready_its_containers_exited_and_rmp_cleans_up(
    lab: Lab,
) -> None:
    sandbox_id = lab.run_pod("victim")
    container_id = lab.run_container(sandbox_id, "sleeper", "sleep 3600")
    shim_pid = json.loads(lab.pod_status(sandbox_id).info["info"])["pid"]
    os.kill(shim_pid, signal.SIGKILL)

    wait_for(
        lambda: lab.pod_status(sandbox_id).status.state == pb.SANDBOX_NOTREADY, what="NOTREADY"
    )
    wait_for(lambda: lab.container(container_id).state == pb.CONTAINER_EXITED, what="EXITED")
    status = lab.container(container_id)
    assert status.reason and status.finished_at >= status.started_at > 0, status
    # The daemon restarted now still says so (from the store, not from memory).
    lab.restart()
    assert lab.pod_status(sandbox_id).status.state == pb.SANDBOX_NOTREADY
    assert lab.container(container_id).state == pb.CONTAINER_EXITED
    lab.remove_pod(sandbox_id)  # the fixture then asserts that nothing leaked


# --- a client gives up on RunPodSandbox and retries ------------------------------------------


def test_cancelled_run_pod_sandbox_and_its_retry_leave_one_pod_and_no_name_loop(lab: Lab) -> None:
    config = lab.pod_config("impatient")
    runtime = lab.daemon.runtime()
    # A deadline shorter than a pod takes (pods can start in ~40 ms: 5 ms is still a race the
    # client may lose either way; both ways must end in one pod).
    try:
        first = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=0.005)
        lab.pods.append(first.pod_sandbox_id)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.details()

    # As kubelet: retry with the same config until the pod is there. The first call either
    # finished (the retry names it) or was undone (the retry makes it): never a name held
    # by nothing.
    def listed() -> list[pb.PodSandbox]:
        items = runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
        return [p for p in items if p.metadata.name == "impatient"]

    sandbox_id = ""
    deadline = time.monotonic() + 15
    while not sandbox_id and time.monotonic() < deadline:
        try:
            sandbox_id = runtime.RunPodSandbox(
                pb.RunPodSandboxRequest(config=config), timeout=30
            ).pod_sandbox_id
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.ALREADY_EXISTS, e.details()
            holder = [p.id for p in listed() if p.id in (e.details() or "")]
            if holder:
                sandbox_id = holder[0]
            else:
                time.sleep(0.1)  # the first call is still building it
    assert sandbox_id, "the retry never got the pod"
    lab.pods.append(sandbox_id)
    pods = listed()
    assert [(p.id, p.state) for p in pods] == [(sandbox_id, pb.SANDBOX_READY)]
    lab.remove_pod(sandbox_id)
    assert listed() == []


# --- CNI plugins that fail or hang -----------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["fail", "hang"])
def test_cni_plugin_that_fails_or_hangs_leaves_no_leak_and_a_retry_works(
    tmp_path: Path, behaviour: str
) -> None:
    cni = tmp_path / "cni"
    install_fake_plugins(cni / "bin", "fake")
    conf_dir = cni / "net.d"
    conf_dir.mkdir()

    def conflist(on: dict[str, str]) -> None:
        plugin = {"type": "fake", "log": str(cni / "calls.log"), "ip": "10.89.0.77/24", "on": on}
        document = {"cniVersion": "1.0.0", "name": "faults", "plugins": [plugin]}
        (conf_dir / "10-faults.conflist").write_text(json.dumps(document))

    conflist({"ADD": behaviour})
    config_yaml = lab_config(network_config(str(conf_dir), str(cni / "bin")))
    with open_lab(tmp_path / "lab", config_yaml) as lab:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as excinfo:
            lab.run_pod("unlucky")
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE, excinfo.value.details()
        assert time.monotonic() - started < 15
        assert lab.leaks() == []
        hung = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _runs(p, cni)]
        assert hung == [], "the hung plugin must have been killed"

        conflist({})  # the plugin is fixed: the same pod now starts
        sandbox_id = lab.run_pod("unlucky")
        assert lab.pod_status(sandbox_id).status.network.ip == "10.89.0.77"


def _runs(proc: Path, directory: Path) -> bool:
    try:
        return str(directory).encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


# --- a registry that drops the connection mid-blob -------------------------------------------


@dataclass
class FakeImage:
    config: bytes
    layer: bytes
    manifest: bytes

    @staticmethod
    def build() -> FakeImage:
        tar_bytes = io.BytesIO()
        with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
            data = os.urandom(512 * 1024)  # incompressible: the blob stays large
            info = tarfile.TarInfo("payload.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        diff_id = "sha256:" + hashlib.sha256(tar_bytes.getvalue()).hexdigest()
        layer = gzip.compress(tar_bytes.getvalue())
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/payload.bin"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": digest(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        return FakeImage(config, layer, manifest)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FlakyRegistry(http.server.ThreadingHTTPServer):
    """Serves one image as `faults/img:v1`; while `drop` is set, every layer download is cut
    after its first 64 KiB (the headers promised all of it)."""

    def __init__(self, image: FakeImage) -> None:
        self.image = image
        self.drop = True
        self.layer_requests = 0
        super().__init__(("127.0.0.1", 0), _RegistryHandler)


class _RegistryHandler(http.server.BaseHTTPRequestHandler):
    server: FlakyRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, body: bytes, content_type: str, digest_header: str = "") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if digest_header:
            self.send_header("Docker-Content-Digest", digest_header)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        image = self.server.image
        if self.path == "/v2/":
            self._send(b"{}", "application/json")
        elif self.path == "/v2/faults/img/manifests/v1":
            media = "application/vnd.oci.image.manifest.v1+json"
            self._send(image.manifest, media, digest(image.manifest))
        elif self.path == f"/v2/faults/img/blobs/{digest(image.config)}":
            self._send(image.config, "application/octet-stream")
        elif self.path == f"/v2/faults/img/blobs/{digest(image.layer)}":
            self.server.layer_requests += 1
            if not self.server.drop or self.command == "HEAD":
                self._send(image.layer, "application/octet-stream")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(image.layer)))
            self.end_headers()
            self.wfile.write(image.layer[: 64 * 1024])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.send_error(404)


def test_registry_dropping_the_connection_mid_blob_fails_the_pull_cleanly_then_a_retry_works(
    tmp_path: Path,
) -> None:
    image = FakeImage.build()
    registry = FlakyRegistry(image)
    thread = threading.Thread(target=registry.serve_forever, daemon=True)
    thread.start()
    host = f"127.0.0.1:{registry.server_address[1]}"
    name = f"{host}/faults/img:v1"
    extra = (
        f"registries:\n  {host}:\n    plain_http: true\nimages:\n  progress_timeout_seconds: 5\n"
    )
    try:
        with open_lab(tmp_path, lab_config(network_config()) + extra) as lab:
            with pytest.raises(grpc.RpcError) as excinfo:
                lab.pull(name)
            assert registry.layer_requests >= 1
            details = excinfo.value.details() or ""
            assert "faults/img" in details, details
            images = lab.daemon.root_dir / "images"
            assert lab.daemon.images().ListImages(pb.ListImagesRequest(), timeout=10).images == []
            assert list((images / "ingest").iterdir()) == [], "a partial download was kept"
            layer_hex = digest(image.layer).split(":")[1]
            assert not (images / "blobs" / "sha256" / layer_hex).exists()

            registry.drop = False
            lab.pull(name)
            status = lab.daemon.images().ImageStatus(
                pb.ImageStatusRequest(image=pb.ImageSpec(image=name)), timeout=10
            )
            assert status.image.id == digest(image.config)
            assert (images / "blobs" / "sha256" / layer_hex).exists()
    finally:
        registry.shutdown()
        registry.server_close()


# --- a full disk -------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    syscalls.mount("tmpfs", path, "tmpfs", 0, f"size={size},mode=700")
    try:
        yield path
    finally:
        syscalls.umount2(path, syscalls.MNT_DETACH)


def fill(directory: Path) -> Path:
    """Writes a file until the filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_full_disk_fails_pull_and_create_with_a_clear_error_and_nothing_half_written(
    tmp_path: Path,
) -> None:
    if not registry_up():
        pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")
    root = tmp_path / "lab" / "daemon" / "root"
    config_yaml = lab_config(network_config())
    with small_tmpfs(root, "256k"), open_lab(tmp_path / "lab", config_yaml) as lab:
        with pytest.raises(grpc.RpcError) as excinfo:
            lab.pull()
        assert "No space left on device" in (excinfo.value.details() or "")
        assert lab.daemon.images().ListImages(pb.ListImagesRequest(), timeout=10).images == []
        assert list((root / "images" / "ingest").iterdir()) == []
    with small_tmpfs(root, "32m"), open_lab(tmp_path / "lab", config_yaml) as lab:
        lab.pull()
        sandbox_id = lab.run_pod("cramped")
        filler = fill(root)
        with pytest.raises(grpc.RpcError) as excinfo:
            lab.run_container(sandbox_id, "main", "sleep 3600")
        assert "No space left on device" in (excinfo.value.details() or "")
        listed = lab.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10)
        assert list(listed.containers) == []
        assert list((root / "containers").iterdir()) == []
        filler.unlink()
        container_id = lab.run_container(sandbox_id, "main", "sleep 3600")  # same name
        assert lab.container(container_id).state == pb.CONTAINER_RUNNING


# --- half-done work a SIGKILL left in the store (found by `make test-faults`) ------------------


def _shim_alive(pid: int) -> bool:
    try:
        return b"cri_py.shim" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_restart_rolls_back_a_pod_whose_shim_was_started_but_never_recorded(lab: Lab) -> None:
    sandbox_id = lab.run_pod("half-built")
    shim_pid = json.loads(lab.pod_status(sandbox_id).info["info"])["pid"]
    lab.daemon.stop(signal.SIGKILL)
    # As if the daemon died right after starting the shim, before recording it.
    store = SandboxStore(lab.daemon.root_dir / "sandboxes")
    (record,) = store.load_all()
    store.save(dataclasses.replace(record, phase=Phase.CREATING, shim=None))
    lab.restart()

    listed = lab.daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    assert list(listed) == []
    assert not _shim_alive(shim_pid), "the unrecorded shim must be stopped"
    assert not (lab.daemon.run_dir / "sandboxes" / sandbox_id).exists()
    lab.pods.remove(sandbox_id)
    assert lab.run_pod("half-built")  # the name is free again


def test_restart_completes_or_rolls_back_container_records_a_kill_left_behind(lab: Lab) -> None:
    sandbox_id = lab.run_pod("lagging")
    running = lab.run_container(sandbox_id, "running", "sleep 3600")
    before = lab.container(running)
    lab.daemon.stop(signal.SIGKILL)
    store = ContainerStore(lab.daemon.root_dir / "containers")
    (record,) = store.load_all()
    # The shim created and started it, the record never heard: the restart completes it.
    store.save(dataclasses.replace(record, pid=0, state=ContainerState.CREATED, started_at=0))
    # A create that died before reaching the shim: the restart rolls it back.
    ghost = dataclasses.replace(
        record,
        id="e" * 64,
        pid=0,
        state=ContainerState.CREATED,
        started_at=0,
        cgroup="",
        config=dataclasses.replace(record.config, metadata=ContainerMetadata(name="ghost")),
    )
    store.save(ghost)
    lab.restart()

    status = lab.container(running)
    assert status.state == pb.CONTAINER_RUNNING
    assert status.started_at == before.started_at
    assert lab.exec(running, "true").exit_code == 0
    listed = lab.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10)
    assert [c.id for c in listed.containers] == [running]
    assert not (lab.daemon.root_dir / "containers" / ghost.id).exists()
    # Its name is free again: the client's retry of the create succeeds.
    assert lab.container(lab.run_container(sandbox_id, "ghost", "sleep 3600")).state == (
        pb.CONTAINER_RUNNING
    )


def _trash_entries(lab: Lab) -> list[Path]:
    dirs = [
        lab.daemon.root_dir / "trash" / "containers",
        lab.daemon.root_dir / "trash" / "sandboxes",
        lab.daemon.run_dir / "trash" / "sandboxes",
    ]
    return [entry for directory in dirs if directory.exists() for entry in directory.iterdir()]


def test_trash_a_kill_left_goes_at_the_next_start_and_a_clean_stop_empties_it(
    lab: Lab,
) -> None:
    sandbox_id = lab.run_pod("binned")
    container_id = lab.run_container(sandbox_id, "main", "echo kept > /written; sleep 3600")
    runtime = lab.daemon.runtime()
    runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=30)
    # RemoveContainer returns with the container's dir gone from the records (one rename).
    assert not (lab.daemon.root_dir / "containers" / container_id).exists()
    lab.daemon.stop(signal.SIGKILL)
    # As if the kill came before the trash's thread got to them: a tree of each kind, one
    # with a directory its owner may not enter (an image's 0555 dirs, overlayfs' work dir).
    left = [
        lab.daemon.root_dir / "trash" / "containers" / f"{'c' * 64}-0badc0de",
        lab.daemon.root_dir / "trash" / "sandboxes" / f"{'d' * 64}-0badc0de",
        lab.daemon.run_dir / "trash" / "sandboxes" / f"{'d' * 64}-0badc0de",
    ]
    for path in left:
        (path / "upper" / "locked").mkdir(parents=True)
        (path / "upper" / "locked" / "file").write_text("x")
        (path / "upper" / "locked").chmod(0)
    lab.daemon = start_daemon(lab.daemon.root_dir.parent, lab.config_yaml)
    # Nothing in the trash is taken for a record: only the pod comes back.
    listed = lab.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10)
    assert list(listed.containers) == []
    assert lab.pod_status(sandbox_id).status.id == sandbox_id
    lab.remove_pod(sandbox_id)
    assert not (lab.daemon.run_dir / "sandboxes" / sandbox_id).exists()
    assert not (lab.daemon.root_dir / "sandboxes" / sandbox_id).exists()
    # A clean stop waits for the trash: the kill's leftovers and the pod's dirs are deleted.
    assert lab.daemon.stop(signal.SIGTERM) == 0
    assert _trash_entries(lab) == []
    lab.daemon = start_daemon(lab.daemon.root_dir.parent, lab.config_yaml)


# --- RemoveContainer answers before its cleanup: a kill in between -------------------------------


def _exited_container(lab: Lab, sandbox_id: str, name: str) -> ContainerRecord:
    container_id = lab.run_container(sandbox_id, name, "exit 0")
    wait_for(lambda: lab.container(container_id).state == pb.CONTAINER_EXITED, what="the exit")
    (record,) = [
        r
        for r in ContainerStore(lab.daemon.root_dir / "containers").load_all()
        if r.id == container_id
    ]
    assert _cgroup_dirs(record), "the container's cgroup must exist to begin with"
    return record


def _cgroup_dirs(record: ContainerRecord) -> list[Path]:
    return [d for d in Cgroupfs.from_host().dirs(record.cgroup) if d.exists()]


def _leases(lab: Lab) -> set[str]:
    images = json.loads((lab.daemon.root_dir / "images" / "images.json").read_text())
    return set(images["leases"])


def _shim_knows(lab: Lab, sandbox_id: str, container_id: str) -> bool:
    try:
        ShimClient(lab.daemon.run_dir / "sandboxes" / sandbox_id).container_status(container_id)
    except ShimError as e:
        assert e.kind == "not_found", e
        return False
    return True


def _assert_cleaned_up(lab: Lab, sandbox_id: str, record: ContainerRecord) -> None:
    """What RemoveContainer leaves for after its answer is done, by the start after a kill."""
    finishing = [
        line
        for line in lab.daemon.log().splitlines()
        if "finishing the removal of a container a crash interrupted" in line
    ]
    assert len(finishing) == 1 and f"container={record.id}" in finishing[0], finishing
    assert _cgroup_dirs(record) == []
    assert not _shim_knows(lab, sandbox_id, record.id)
    assert record.id not in _leases(lab)
    assert list((lab.daemon.root_dir / "removing" / "containers").iterdir()) == []
    listed = lab.daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10)
    assert list(listed.containers) == []  # nothing brought it back
    assert lab.pod_status(sandbox_id).status.state == pb.SANDBOX_READY


@contextlib.contextmanager
def _removed_while_the_shim_is_stopped(
    lab: Lab, sandbox_id: str, record: ContainerRecord
) -> Iterator[None]:
    """RemoveContainer answered while the pod's shim is stopped (SIGSTOP, resumed on the way
    out): its cleanup is held at its first step, the shim's forget (a call that times out
    after 5 s); the answer does not need the shim."""
    shim_pid = json.loads(lab.pod_status(sandbox_id).info["info"])["pid"]
    os.kill(shim_pid, signal.SIGSTOP)
    try:
        runtime = lab.daemon.runtime()
        runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=record.id), timeout=10)
        assert (lab.daemon.root_dir / "removing" / "containers" / record.id).is_dir()
        yield
    finally:
        os.kill(shim_pid, signal.SIGCONT)


def test_a_kill_right_after_remove_container_answered_leaves_a_cleanup_the_next_start_finishes(
    lab: Lab,
) -> None:
    sandbox_id = lab.run_pod("half-removed")
    record = _exited_container(lab, sandbox_id, "gone")
    with _removed_while_the_shim_is_stopped(lab, sandbox_id, record):
        assert _cgroup_dirs(record) != []
        lab.daemon.stop(signal.SIGKILL)
    lab.daemon = start_daemon(lab.daemon.root_dir.parent, lab.config_yaml)
    _assert_cleaned_up(lab, sandbox_id, record)
    # The name is free: the client can create the container again.
    assert lab.container(lab.run_container(sandbox_id, "gone", "sleep 3600")).state == (
        pb.CONTAINER_RUNNING
    )


def test_the_next_start_finishes_a_removal_whose_cleanup_had_not_begun(lab: Lab) -> None:
    sandbox_id = lab.run_pod("not-begun")
    record = _exited_container(lab, sandbox_id, "gone")
    lab.daemon.stop(signal.SIGKILL)
    # As RemoveContainer's answer leaves it, before any of the cleanup (the shim still knows
    # the container, its cgroup and lease are there): the dir moved out of the records.
    root = lab.daemon.root_dir
    os.rename(root / "containers" / record.id, root / "removing" / "containers" / record.id)
    assert _shim_knows(lab, sandbox_id, record.id)
    assert record.id in _leases(lab)
    # The leak checker names the unfinished removal, not its cgroup and lease one by one.
    assert [leak.split(":")[0] for leak in lab.leaks()] == [f"removal {record.id}"]
    lab.daemon = start_daemon(lab.daemon.root_dir.parent, lab.config_yaml)
    _assert_cleaned_up(lab, sandbox_id, record)


def test_a_clean_stop_waits_for_the_cleanups_removals_left(lab: Lab) -> None:
    sandbox_id = lab.run_pod("drained")
    record = _exited_container(lab, sandbox_id, "gone")
    # The cleanup waits for the stopped shim until its call times out (5 s), and the stop for it.
    with _removed_while_the_shim_is_stopped(lab, sandbox_id, record):
        assert lab.daemon.stop(signal.SIGTERM) == 0
    assert _cgroup_dirs(record) == []
    assert record.id not in _leases(lab)
    assert list((lab.daemon.root_dir / "removing" / "containers").iterdir()) == []
    # The step that failed is in the log, with the container's ID.
    failed = [
        line
        for line in lab.daemon.log().splitlines()
        if "a step of a container's removal failed" in line and f"container={record.id}" in line
    ]
    assert len(failed) == 1 and "step=shim" in failed[0], failed
    lab.daemon = start_daemon(lab.daemon.root_dir.parent, lab.config_yaml)
    assert "finishing the removal" not in lab.daemon.log()
