"""The daemon's part in OCI hooks: the create-time check, the call timeouts, poststop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cri_py.errors import InvalidArgument
from cri_py.oci.hooks import DEFAULT_TIMEOUT_SECONDS, Hook, Hooks
from cri_py.runtime.container_hooks import (
    check_hooks,
    create_call_seconds,
    read_hooks,
    run_poststop,
    start_call_seconds,
)


def test_a_malformed_hook_is_an_invalid_argument_naming_it() -> None:
    with pytest.raises(InvalidArgument, match=r"OCI hooks: hooks.poststart\[1\].path"):
        check_hooks({"hooks": {"poststart": [{"path": "/ok"}, {"path": "rel"}]}})
    assert check_hooks({}) == Hooks()


def test_calls_wait_for_the_hooks_of_their_own_operation_only() -> None:
    hooks = Hooks(
        prestart=(Hook("/a", timeout=4),),
        create_container=(Hook("/b"),),
        poststart=(Hook("/c", timeout=2),),
        poststop=(Hook("/d", timeout=100),),
    )
    create = create_call_seconds(30.0, hooks)
    start = start_call_seconds(5.0, hooks)
    assert create >= 30 + 4 + DEFAULT_TIMEOUT_SECONDS and create < 30 + 4 + 10 + 100
    assert 5 + 2 <= start < 5 + 2 + 100
    assert create_call_seconds(30.0, Hooks()) == 30.0 and start_call_seconds(5.0, Hooks()) == 5.0


def test_poststop_runs_every_hook_with_the_stopped_state_and_survives_failures(
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    record = tmp_path / "record.sh"
    record.write_text(f"#!/bin/sh\ncat >> {seen}\necho >> {seen}\nexit $1\n")
    record.chmod(0o755)
    hook = {"path": str(record)}
    spec = {
        "annotations": {"k": "v"},
        "hooks": {"poststop": [dict(hook, args=["r", "3"]), dict(hook, args=["r", "0"])]},
    }
    (tmp_path / "config.json").write_text(json.dumps(spec))
    run_poststop("c1", tmp_path)  # the first fails: logged, the second still runs
    states = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(states) == 2
    assert states[0] == {
        "ociVersion": "1.2.0",
        "id": "c1",
        "status": "stopped",
        "bundle": str(tmp_path),
        "annotations": {"k": "v"},
    }


def test_a_bundle_without_a_readable_spec_has_no_hooks(tmp_path: Path) -> None:
    assert read_hooks(tmp_path / "gone") == (Hooks(), {})
    (tmp_path / "config.json").write_text("{not json")
    assert read_hooks(tmp_path) == (Hooks(), {})
    run_poststop("c1", tmp_path)  # nothing to run, nothing raised
