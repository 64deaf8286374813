"""`cri-py info`'s report: what it says with and without a running daemon."""

from __future__ import annotations

from pathlib import Path

from cri_py.config import parse_layers
from cri_py.info import DaemonReport, InfoReport, render

CONFIG = parse_layers(
    [
        (
            "c.yaml",
            {
                "registries": {"registry.k8s.io": {"mirrors": ["http://127.0.0.1:5000"]}},
                "metrics": {"address": "127.0.0.1", "port": 9464},
            },
        )
    ]
)


def test_running_daemon_counts_readiness_and_network_mode() -> None:
    daemon = DaemonReport(
        version="cri-py 0.1.0",
        conditions=[
            ("RuntimeReady", True, "", ""),
            ("NetworkReady", False, "NetworkPluginNotReady", "no bridge"),
        ],
        network="builtin",
        pods={"ready": 1, "notready": 2},
        containers={"running": 1},
        images=3,
        shims=1,
    )
    text = render(InfoReport(CONFIG, [Path("/etc/cri-py/config.yaml")], "hybrid", daemon, leaks=[]))
    assert "config:\n  files: /etc/cri-py/config.yaml\n" in text
    assert "  registries: registry.k8s.io (1 mirror)\n" in text
    assert "  metrics: http://127.0.0.1:9464/metrics\n" in text
    assert "cgroups: hybrid\n" in text
    assert "daemon: running, cri-py 0.1.0, on /run/cri-py/cri-py.sock\n" in text
    assert "  RuntimeReady: true\n" in text
    assert "  NetworkReady: false (NetworkPluginNotReady: no bridge)\n" in text
    assert "  network mode: built-in bridge cri-py0\n" in text
    assert "  pods: 3 (2 notready, 1 ready)\n" in text
    assert "  containers: 1 (1 running)\n" in text
    assert "  images: 3\n  shims: 1\n" in text
    assert text.endswith("leaks: none\n")


def test_daemon_not_running_is_said_and_leaks_are_listed() -> None:
    text = render(
        InfoReport(
            parse_layers([]),
            [],
            "v2 (unified)",
            None,
            daemon_problem="no socket at /run/cri-py/cri-py.sock",
            leaks=["mount /run/x: no sandbox holds it"],
        )
    )
    assert "files: none (embedded defaults)" in text
    assert "metrics: off" in text
    assert "daemon: not running (no socket at /run/cri-py/cri-py.sock)\n" in text
    assert "pods:" not in text
    assert text.endswith("leaks: 1\n  mount /run/x: no sandbox holds it\n")


def test_a_failed_leak_check_is_reported_as_such() -> None:
    text = render(
        InfoReport(parse_layers([]), [], "v1", None, "x", leaks=None, leak_problem="EPERM")
    )
    assert text.endswith("leaks: check failed (EPERM)\n")
