"""Status: every runtime handler with its features (RuntimeStatus' `runtime_handlers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from cri_py.api import api_pb2 as pb
from cri_py.config import parse_layers
from cri_py.linux import features
from cri_py.model.network import NetworkState
from cri_py.runtime.handlers import RuntimeHandlers
from cri_py.runtime.node import NodeState
from cri_py.runtime.sandboxes import SandboxService
from cri_py.server.runtime import RuntimeServicer


class Sandboxes:
    """What Status asks of the sandbox service."""

    def __init__(self, handlers: RuntimeHandlers) -> None:
        self.handlers = handlers

    def network_state(self) -> NetworkState:
        return NetworkState(ready=True)


async def test_status_lists_each_handler_with_its_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_layers(
        [
            (
                "test",
                {
                    "root_dir": str(tmp_path),
                    "runtimes": {
                        "test-handler": {},
                        "locked": {"user_namespaces": False, "recursive_read_only_mounts": False},
                    },
                },
            )
        ]
    )
    monkeypatch.setattr(features, "recursive_read_only_mounts", lambda: True)
    monkeypatch.setattr(features, "user_namespaces_problem", lambda root: "")
    sandboxes = cast(SandboxService, Sandboxes(RuntimeHandlers(config)))
    servicer = RuntimeServicer(config, NodeState(tmp_path), sandboxes)
    response = await servicer.Status(pb.StatusRequest(), cast(Any, None))
    handlers = [
        (h.name, h.features.recursive_read_only_mounts, h.features.user_namespaces)
        for h in response.runtime_handlers
    ]
    assert handlers == [("", True, True), ("locked", False, False), ("test-handler", True, True)]
    # A kernel without the feature turns it off for every handler.
    monkeypatch.setattr(features, "recursive_read_only_mounts", lambda: False)
    response = await servicer.Status(pb.StatusRequest(), cast(Any, None))
    assert [h.features.recursive_read_only_mounts for h in response.runtime_handlers] == [
        False,
        False,
        False,
    ]
    assert response.status.conditions[0].status
