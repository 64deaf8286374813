"""Node state: readiness conditions and the pod CIDR kubelet sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_py.errors import InvalidArgument
from cri_py.model.network import NetworkState
from cri_py.runtime.node import (
    NETWORK_READY,
    RUNTIME_READY,
    NodeState,
    conditions,
    validate_pod_cidr,
)


def test_network_not_ready_carries_a_reason() -> None:
    down = NetworkState(False, "NetworkPluginNotReady", "bridge cri-py0 is down")
    runtime, network = conditions(True, down)
    assert (runtime.type, runtime.status) == (RUNTIME_READY, True)
    assert (network.type, network.status) == (NETWORK_READY, False)
    assert (network.reason, network.message) == ("NetworkPluginNotReady", "bridge cri-py0 is down")


def test_ready_network_has_no_reason() -> None:
    _, network = conditions(True, NetworkState(ready=True))
    assert network.status and not network.reason


def test_pod_cidr_persists_across_restarts(tmp_path: Path) -> None:
    NodeState(tmp_path).set_pod_cidr("10.244.0.0/24, fd00::/64")
    assert NodeState(tmp_path).pod_cidr == "10.244.0.0/24,fd00::/64"


def test_bad_pod_cidr_is_rejected_and_changes_nothing(tmp_path: Path) -> None:
    node = NodeState(tmp_path)
    node.set_pod_cidr("10.244.0.0/24")
    with pytest.raises(InvalidArgument, match="not-a-cidr"):
        node.set_pod_cidr("not-a-cidr")
    assert NodeState(tmp_path).pod_cidr == "10.244.0.0/24"


def test_empty_pod_cidr_means_unset() -> None:
    assert validate_pod_cidr("") == ""
