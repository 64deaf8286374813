"""Shared fixtures for root-only tests against a real `cri-py serve` process.

Each daemon gets its own root, run dir and socket under a temp dir and is stopped by its PID
(never by name) when the test ends, pass or fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from cri_py.api import api_pb2 as pb
from cri_py.api import api_pb2_grpc as pb_grpc

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, /run)")


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: Path
    root_dir: Path
    run_dir: Path
    log_file: Path

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def runtime(self) -> pb_grpc.RuntimeServiceStub:
        return pb_grpc.RuntimeServiceStub(grpc.insecure_channel(self.address))

    def images(self) -> pb_grpc.ImageServiceStub:
        return pb_grpc.ImageServiceStub(grpc.insecure_channel(self.address))

    def log(self) -> str:
        return self.log_file.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


# Test daemons keep their cgroups under the tests' own parent: pods that name no parent and
# shims would otherwise land in the machine-wide defaults (/cri-py, /cri-py-shims).
TEST_CGROUPS = {"default_parent": "/cri-py-tests/default", "shim_cgroup": "/cri-py-tests/shims"}


# And a daemon that names no bridge gets this one (deleted with the session), not cri-py0.
TEST_NETWORK = {"bridge": "cri-pytd", "subnet": "10.77.0.0/24"}


def with_test_cgroups(config_yaml: str) -> str:
    """The config with the tests' cgroup and bridge defaults where it sets none itself."""
    data = yaml.safe_load(config_yaml) or {}
    cgroups = data.setdefault("cgroups", {})
    for key, value in TEST_CGROUPS.items():
        cgroups.setdefault(key, value)
    network = data.setdefault("network", {})
    if "bridge" not in network:
        network.update(TEST_NETWORK)
    return yaml.safe_dump(data)


def start_daemon(
    base: Path,
    config_yaml: str = "",
    *extra: str,
    wait: bool = True,
    log_level: str | None = "debug",
    pass_fds: Sequence[int] = (),
) -> Daemon:
    """Starts `cri-py serve` with state under `base`; waits until it answers Version.
    `log_level=None` gives no --log-level flag, so the config files decide. `pass_fds`: open
    descriptors the daemon inherits (the descriptors it opens itself get higher numbers)."""
    base.mkdir(parents=True, exist_ok=True)
    config = base / "config.yaml"
    config.write_text(with_test_cgroups(config_yaml))
    run_dir = base / "run"
    sock = run_dir / "cri-py.sock"
    log_file = base / "daemon.log"
    args = [
        sys.executable,
        "-m",
        "cri_py.cli",
        "serve",
        "--config",
        str(config),
        "--config-dir",
        str(base / "config.d"),
        "--root-dir",
        str(base / "root"),
        "--run-dir",
        str(run_dir),
        "--socket",
        str(sock),
        *(["--log-level", log_level] if log_level else []),
        *extra,
    ]
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, pass_fds=tuple(pass_fds)
        )
    daemon = Daemon(process, sock, base / "root", run_dir, log_file)
    if wait:
        wait_serving(daemon)
    return daemon


def wait_serving(daemon: Daemon, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.process.returncode}:\n{daemon.log()}")
        if daemon.socket.exists():
            try:
                daemon.runtime().Version(pb.VersionRequest(), timeout=1)
                return
            except grpc.RpcError:
                pass
        time.sleep(0.05)
    daemon.stop(signal.SIGKILL)
    raise AssertionError(f"daemon did not serve within {timeout}s:\n{daemon.log()}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path / "daemon")
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session", autouse=True)
def remove_test_bridges() -> Iterator[None]:
    """Each test module runs its daemons on a bridge of its own (cri-pyt*, cri-pycni0...);
    the ones this session made are deleted when it ends, so the machine is left as found."""
    before = set(_cri_py_links())
    yield
    if os.geteuid() != 0:
        return
    for name in sorted(set(_cri_py_links()) - before):
        if _is_test_link(name):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


# Bridges of the test modules (cri-pyt0..9, cri-pycni0, cri-pyz0/1, cri-pyu0, cri-pyc0,
# cri-pyf1). Only these, and veths on them, are deleted: e2e runs on the same machine
# (cri-pyk0, cri-pyk1, cri-pyf0...) create links while a test session runs, and keep them.
_TEST_BRIDGE_PREFIXES = ("cri-pyt", "cri-pycni", "cri-pyz", "cri-pyu")
# And these by full name: a prefix with a hex digit after "cri-py" would match pod veths
# (named cri-py<hex>) of any cri-py on the machine.
_TEST_BRIDGES = frozenset({"cri-pyc0", "cri-pyf1"})


def _is_test_link(name: str) -> bool:
    try:
        master = os.path.basename(os.readlink(f"/sys/class/net/{name}/master"))
    except OSError:
        master = ""
    return any(
        n.startswith(_TEST_BRIDGE_PREFIXES) or n in _TEST_BRIDGES for n in (name, master) if n
    )


@pytest.fixture(scope="session", autouse=True)
def remove_test_cgroups() -> Iterator[None]:
    """The tests' cgroups (/cri-py-tests and everything in it: shims, default parent, the
    modules' parents) go when the session ends, deepest first. Every daemon and pod of the
    session is gone by then; a cgroup still in use (another run's) is left and named."""
    yield
    if os.geteuid() != 0:
        return
    for hierarchy in _cgroup_mounts():
        top = Path(hierarchy) / "cri-py-tests"
        if not top.is_dir():
            continue
        for path, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(path)
            except OSError as e:
                print(f"test cgroup {path} left: {e.strerror}")


def _cgroup_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if " - cgroup" in line]


def _cri_py_links() -> list[str]:
    try:
        return [n for n in os.listdir("/sys/class/net") if n.startswith("cri-py")]
    except OSError:
        return []
