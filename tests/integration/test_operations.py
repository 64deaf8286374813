"""Operating a running daemon: the Prometheus endpoint, config reload on SIGHUP, `cri-py info`.

Pods run on the test bridge `cri-pyt8` (10.91.0.0/24) with containers under the tests' cgroup
parent; needs the lab registry, like test_containers.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri_py.api import api_pb2 as pb
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode

from .conftest import Daemon, needs_root, start_daemon
from .test_container_cgroups import create
from .test_containers import CGROUP_PARENT, ROOT, Lab, open_lab

pytestmark = needs_root

NETWORK = "network:\n  bridge: cri-pyt8\n  subnet: 10.91.0.0/24\n  cni_conf_dir: /nonexistent\n"
CGROUPS = f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + NETWORK
    + CGROUPS
    + "metrics:\n  address: 127.0.0.1\n  port: 0\n"
)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def metrics_url(daemon: Daemon) -> str:
    found = re.search(r'msg="metrics serving" address=(\S+) port=(\d+)', daemon.log())
    assert found, daemon.log()
    return f"http://{found.group(1)}:{found.group(2)}/metrics"


def scrape(daemon: Daemon) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(metrics_url(daemon), timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("operations"), CONFIG) as opened:
        yield opened


def test_metrics_show_rpcs_pods_containers_pulls_shims_and_oom_kills(lab: Lab) -> None:
    pod = lab.run_pod("metrics")
    sleeper = create(lab, pod, "sleeper", ["sleep", "1000"])
    lab.start(sleeper)
    oom_killed = 0
    if Cgroupfs.from_host().mode != CgroupMode.V2:  # the OOM setup below is v1's
        limit = 15 * 1024 * 1024
        resources = pb.LinuxContainerResources(
            memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=limit
        )
        oom = create(lab, pod, "oom", ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M"], resources)
        lab.start(oom)
        assert lab.wait_exited(oom, timeout=30).reason == "OOMKilled"
        oom_killed = 1
    rt = lab.daemon.runtime()
    with pytest.raises(Exception, match="NOT_FOUND"):
        rt.ContainerStatus(pb.ContainerStatusRequest(container_id="f" * 64), timeout=10)

    found = scrape(lab.daemon)
    assert sample(found, "cri_py_rpc_duration_seconds_count", rpc="RunPodSandbox") >= 1
    assert sample(found, "cri_py_rpc_duration_seconds_count", rpc="PullImage") == 1
    assert sample(found, "cri_py_rpc_errors_total", rpc="ContainerStatus", code="NOT_FOUND") == 1
    ready = len(rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items)
    assert sample(found, "cri_py_pods", state="ready") == ready >= 1
    assert sample(found, "cri_py_shims") == ready
    assert sample(found, "cri_py_containers", state="running") == 1
    assert sample(found, "cri_py_containers", state="exited") == oom_killed
    assert sample(found, "cri_py_containers_oom_killed") == oom_killed
    assert sample(found, "cri_py_images") == 1
    # busybox came from the lab registry into this daemon's empty store.
    assert sample(found, "cri_py_image_pull_bytes_total") > 100_000
    assert sample(found, "cri_py_image_pull_duration_seconds_count") == 1
    assert sample(found, "cri_py_leaked_resources", kind="mount") == 0

    lab.remove_pod(pod)
    found = scrape(lab.daemon)
    assert sample(found, "cri_py_pods", state="ready") == ready - 1
    assert sample(found, "cri_py_containers", state="running") == 0


def run_info(daemon: Daemon, *extra: str) -> subprocess.CompletedProcess[str]:
    base = daemon.root_dir.parent
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cri_py.cli",
            "info",
            "--config",
            str(base / "config.yaml"),
            "--config-dir",
            str(base / "config.d"),
            "--root-dir",
            str(daemon.root_dir),
            "--run-dir",
            str(daemon.run_dir),
            "--socket",
            str(daemon.socket),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_info_reports_a_running_daemon(lab: Lab) -> None:
    pod = lab.run_pod("info")
    lab.start(create(lab, pod, "sleeper", ["sleep", "1000"]))
    result = run_info(lab.daemon)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.match(r"cri-py \S+\n", out)
    assert f"  cgroup parent: {CGROUP_PARENT}\n" in out
    assert "  built-in network: bridge cri-pyt8, subnet 10.91.0.0/24\n" in out
    assert "  metrics: on 127.0.0.1, a port chosen at start" in out
    mode = Cgroupfs.from_host().mode.value
    assert re.search(rf"^cgroups: {mode}\b", out, re.M)
    assert "daemon: running, cri-py " in out
    assert "  RuntimeReady: true\n  NetworkReady: true\n" in out
    assert "  network mode: built-in bridge cri-pyt8\n" in out
    assert "  pods: 1 (1 ready)\n" in out
    assert "  containers: 1 (1 running)\n" in out
    assert "  images: 1\n  shims: 1\n" in out
    assert out.endswith("leaks: none\n"), out
    lab.remove_pod(pod)


def test_info_says_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    socket = tmp_path / "none.sock"
    result = subprocess.run(
        [sys.executable, "-m", "cri_py.cli", "info", "--config", str(tmp_path / "c.yaml"),
         "--config-dir", str(tmp_path / "d"), "--socket", str(socket),
         "--root-dir", str(tmp_path / "root"), "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"daemon: not running (no socket at {socket})\n" in result.stdout


def rpc_debug_lines(daemon: Daemon) -> int:
    return sum(
        1
        for line in daemon.log().splitlines()
        if line.startswith("time=") and " level=debug " in line and " rpc=Version " in line
    )


def version(daemon: Daemon) -> None:
    daemon.runtime().Version(pb.VersionRequest(), timeout=10)


def reload(daemon: Daemon, done: str) -> str:
    """SIGHUP, then the log lines the reload wrote once `done` appears among them."""
    before = len(daemon.log())
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(f"{done!r} in the log", lambda: done in daemon.log()[before:])
    return daemon.log()[before:]


def test_sighup_reloads_log_level_from_a_drop_in_without_restart(tmp_path: Path) -> None:
    daemon = start_daemon(
        tmp_path / "daemon", "log_level: info\n" + NETWORK + CGROUPS, log_level=None
    )
    drop_ins = tmp_path / "daemon" / "config.d"
    drop_ins.mkdir()
    try:
        pid = daemon.process.pid
        for _ in range(3):
            version(daemon)
        assert rpc_debug_lines(daemon) == 0  # info level: polled calls are not logged

        (drop_ins / "50-debug.yaml").write_text("log_level: debug\n")
        out = reload(daemon, "config reloaded")
        assert "applied=log_level" in out and "log_level=debug" in out
        version(daemon)
        wait_for("a debug rpc line", lambda: rpc_debug_lines(daemon) >= 1)

        # A bad drop-in: the old config stays (still debug) and the log names file and key.
        (drop_ins / "60-bad.yaml").write_text("log_level: loud\n")
        out = reload(daemon, "config reload failed")
        assert re.search(r"60-bad\.yaml: log_level: must be one of debug, info", out), out
        seen = rpc_debug_lines(daemon)
        version(daemon)
        wait_for("debug lines after the failed reload", lambda: rpc_debug_lines(daemon) > seen)

        # Settings that need a restart are named; reloadable ones still apply.
        (drop_ins / "60-bad.yaml").unlink()
        (drop_ins / "50-debug.yaml").unlink()
        (drop_ins / "70-restart.yaml").write_text("stream:\n  idle_timeout_seconds: 60\n")
        out = reload(daemon, "config reloaded")
        assert "need a restart" in out and "keys=stream.idle_timeout_seconds" in out
        seen = rpc_debug_lines(daemon)
        version(daemon)
        version(daemon)
        assert rpc_debug_lines(daemon) == seen  # back at info

        assert daemon.process.pid == pid and daemon.process.poll() is None
        assert daemon.log().count("msg=serving") == 1
    finally:
        assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket)
