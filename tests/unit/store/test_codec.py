"""Sandbox records survive the trip through JSON unchanged."""

from __future__ import annotations

import json

from cri_py.model.sandbox import (
    DNSConfig,
    NamespaceMode,
    NamespaceOptions,
    Phase,
    PodMetadata,
    PortMapping,
    SandboxConfig,
    SandboxRecord,
    ShimInfo,
)
from cri_py.store.codec import from_data, to_data


def test_sandbox_record_round_trips() -> None:
    record = SandboxRecord(
        id="ab" * 32,
        config=SandboxConfig(
            metadata=PodMetadata("web", "uid", "default", 2),
            hostname="web-0",
            dns=DNSConfig(servers=("10.96.0.10",), options=("ndots:5",)),
            port_mappings=(PortMapping(0, 80, 8080, ""),),
            labels={"app": "web"},
            namespaces=NamespaceOptions(pid=NamespaceMode.CONTAINER, ipc=NamespaceMode.NODE),
            sysctls={"net.core.somaxconn": "1024"},
        ),
        created_at=1_700_000_000_000_000_000,
        phase=Phase.CREATED,
        shim=ShimInfo(pid=10, start_time=20, init_pid=11),
        ip="10.88.0.2",
        namespaces={"net": "/run/cri-py/sandboxes/x/ns/net"},
    )
    data = json.loads(json.dumps(to_data(record)))
    assert from_data(SandboxRecord, data) == record


def test_unknown_keys_are_ignored_and_missing_ones_default() -> None:
    data = {
        "id": "x",
        "created_at": 1,
        "future": True,
        "config": {"metadata": {"name": "a", "uid": "u", "namespace": "n"}},
    }
    record = from_data(SandboxRecord, data)
    assert record.phase == Phase.CREATING and record.shim is None
