"""bench/baseline.py: the containerd that `make bench COMPARE=containerd` and
`make e2e-node RUNTIME=containerd` run as a baseline, and its CNI conflist."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[3] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import baseline  # noqa: E402

CRI = "io.containerd.grpc.v1.cri"


def config(**overrides: str) -> dict[str, Any]:
    args = {
        "root": "/var/tmp/ne/containerd/root",
        "state": "/var/tmp/ne/containerd/state",
        "socket": "/var/tmp/ne/containerd/containerd.sock",
        "cni_conf_dir": "/var/tmp/ne/containerd/cni",
        "shim_cgroup": "/cri-py-node-e2e/shims",
        **overrides,
    }
    return tomllib.loads(baseline.containerd_config(**args))


def test_every_path_containerd_writes_is_the_callers() -> None:
    toml = config()
    assert toml["version"] == 2
    assert toml["root"] == "/var/tmp/ne/containerd/root"
    assert toml["state"] == "/var/tmp/ne/containerd/state"
    assert toml["grpc"]["address"] == "/var/tmp/ne/containerd/containerd.sock"
    assert toml["ttrpc"]["address"] == "/var/tmp/ne/containerd/containerd.sock.ttrpc"
    # containerd's default for the opt plugin is /opt/containerd, on the host.
    assert toml["plugins"]["io.containerd.internal.v1.opt"]["path"].startswith(
        "/var/tmp/ne/containerd/root/"
    )
    assert toml["plugins"][CRI]["cni"]["conf_dir"] == "/var/tmp/ne/containerd/cni"


def test_cgroupfs_runc_restricted_oom_score_and_the_shim_cgroup() -> None:
    cri = config()["plugins"][CRI]
    assert cri["restrict_oom_score_adj"] is True  # no CAP_SYS_RESOURCE here
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False
    assert runc["options"]["BinaryName"] == "/usr/sbin/runc"
    assert runc["options"]["ShimCgroup"] == "/cri-py-node-e2e/shims"
    assert cri["enable_selinux"] is False


def test_the_lab_registry_mirrors_what_cri_py_mirrors() -> None:
    mirrors = config()["plugins"][CRI]["registry"]["mirrors"]
    lab = (BENCH.parent / "e2e" / "lab-config.yaml").read_text()
    for host in ("registry.k8s.io", "docker.io", "gcr.io", "k8s.gcr.io", "quay.io"):
        # containerd 1.6 takes a mirror path as the registry's /v2 root.
        assert mirrors[host]["endpoint"] == [f"http://127.0.0.1:5000/v2/{host}"]
        assert f'mirrors: ["http://127.0.0.1:5000/{host}"]' in lab


def test_the_sandbox_image_is_the_callers_choice() -> None:
    assert config()["plugins"][CRI]["sandbox_image"] == baseline.PAUSE_IMAGE
    pause = "registry.k8s.io/pause:3.10.2"
    assert config(sandbox_image=pause)["plugins"][CRI]["sandbox_image"] == pause


def test_the_command_line_prints_the_same_files() -> None:
    def run(*args: str) -> str:
        return subprocess.run(
            [sys.executable, str(BENCH / "baseline.py"), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    toml = tomllib.loads(
        run(
            "containerd-config",
            "--root=/r",
            "--state=/s",
            "--socket=/s/c.sock",
            "--cni-conf-dir=/c",
            "--shim-cgroup=/x/shims",
            "--sandbox-image=registry.k8s.io/pause:3.10.2",
        )
    )
    assert toml["root"] == "/r"
    assert toml["plugins"][CRI]["sandbox_image"] == "registry.k8s.io/pause:3.10.2"
    conflist = json.loads(
        run(
            "cni-conflist",
            "--name=ne",
            "--bridge=ctrne0",
            "--subnet=10.75.0.0/24",
            "--ipam-dir=/s/ipam",
        )
    )
    assert conflist == baseline.cni_conflist("ne", "ctrne0", "10.75.0.0/24", "/s/ipam")
    bridge = conflist["plugins"][0]
    assert (bridge["type"], bridge["bridge"], bridge["ipMasq"]) == ("bridge", "ctrne0", False)
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.75.0.0/24"}]]
    assert bridge["ipam"]["dataDir"] == "/s/ipam"
    assert [p["type"] for p in conflist["plugins"]] == ["bridge"]  # no portmap: no iptables
