"""OCI hooks read from a spec: kinds in order, checks, the state JSON, appending."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cri_py.oci.hooks import (
    DEFAULT_TIMEOUT_SECONDS,
    Hook,
    HookError,
    Hooks,
    append_hooks,
    budget,
    hooks_from_spec,
    state,
)
from cri_py.oci.plan import build_plan


def test_every_kind_is_read_in_order_with_its_fields() -> None:
    spec = {
        "hooks": {
            "prestart": [{"path": "/p"}],
            "createRuntime": [{"path": "/r1", "args": ["r1", "-x"]}, {"path": "/r2"}],
            "createContainer": [{"path": "/c", "env": ["A=1", "B=x=y"]}],
            "startContainer": [{"path": "/s", "timeout": 3}],
            "poststart": [{"path": "/ps"}],
            "poststop": [{"path": "/stop"}],
        }
    }
    hooks = hooks_from_spec(spec)
    assert [h.path for h in hooks.runtime_create] == ["/p", "/r1", "/r2"]
    assert hooks.create_runtime[0].argv == ("r1", "-x")
    assert hooks.create_runtime[1].argv == ("/r2",)  # no args: argv[0] is the path
    assert hooks.create_container[0].env == ("A=1", "B=x=y")
    assert hooks.start_container[0].seconds == 3.0
    assert hooks.poststart[0].seconds == float(DEFAULT_TIMEOUT_SECONDS)
    assert hooks.pause_before_pivot and hooks
    assert budget(hooks.runtime_create) == 3 * DEFAULT_TIMEOUT_SECONDS


def test_no_hooks_means_no_pause_and_a_plan_without_hooks() -> None:
    assert not hooks_from_spec({})
    assert not hooks_from_spec({"hooks": {"poststop": []}})
    only_late = hooks_from_spec({"hooks": {"poststart": [{"path": "/x"}]}})
    assert only_late and not only_late.pause_before_pivot
    plan = build_plan({"process": {"args": ["/bin/true"]}, "hooks": {"prestart": [{"path": "/h"}]}})
    assert plan.hooks.prestart == (Hook("/h"),)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"prestart": [{"path": "hook"}]}, r"prestart\[0\]\.path 'hook' must be an absolute"),
        ({"poststop": [{"path": "/a/../b"}]}, r"without '\.\.'"),
        ({"poststop": [{}]}, r"path None"),
        ({"poststart": [{"path": "/h", "timeout": 0}]}, "positive"),
        ({"poststart": [{"path": "/h", "timeout": True}]}, "positive"),
        ({"poststart": [{"path": "/h", "timeout": 1.5}]}, "positive"),
        ({"poststart": [{"path": "/h", "timeout": 100000}]}, "above cri-py's"),
        ({"poststart": [{"path": "/h", "env": ["NOVALUE"]}]}, "not NAME=value"),
        ({"poststart": [{"path": "/h", "args": "x"}]}, "list of strings"),
        ({"poststart": [{"path": "/h", "args": ["a\0b"]}]}, "NUL"),
        ({"preStart": [{"path": "/h"}]}, r"unknown hook kinds \['preStart'\]"),
        ({"poststart": {"path": "/h"}}, "must be a list"),
    ],
)
def test_malformed_hooks_are_refused_naming_the_hook(section: Any, message: str) -> None:
    with pytest.raises(HookError, match=message):
        hooks_from_spec({"hooks": section})


def test_a_plan_with_a_malformed_hook_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        build_plan(
            {"process": {"args": ["/x"]}, "hooks": {"poststop": [{"path": "/h", "timeout": -1}]}}
        )


def test_state_has_the_runtime_specs_fields() -> None:
    data = json.loads(state("c1", "creating", 42, "/run/c1", {"a": "b"}))
    assert data == {
        "ociVersion": "1.2.0",
        "id": "c1",
        "status": "creating",
        "pid": 42,
        "bundle": "/run/c1",
        "annotations": {"a": "b"},
    }
    stopped = json.loads(state("c1", "stopped", 0, "/run/c1", {}))
    assert "pid" not in stopped and "annotations" not in stopped


def test_append_hooks_adds_after_what_is_there_and_round_trips() -> None:
    spec: dict[str, Any] = {"hooks": {"poststop": [{"path": "/first"}]}}
    added = (Hook("/second", ("second", "a"), ("X=1",), 7),)
    append_hooks(spec, "poststop", added)
    append_hooks(spec, "createRuntime", ())
    assert spec["hooks"] == {
        "poststop": [
            {"path": "/first"},
            {"path": "/second", "args": ["second", "a"], "env": ["X=1"], "timeout": 7},
        ]
    }
    assert hooks_from_spec(spec).poststop == (Hook("/first"), *added)
    with pytest.raises(HookError):
        append_hooks(spec, "preStart", added)
    assert Hooks() == hooks_from_spec({})
