"""The lab Docker's runc wrapper (e2e/kind/runc_wrapper.py): capabilities the machine's bounding
set lacks leave every set of the spec, nothing else changes, and runc gets the same arguments."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

WRAPPER = Path(__file__).resolve().parents[3] / "e2e" / "kind" / "runc_wrapper.py"
# This machine's CapBnd: every capability up to CAP_CHECKPOINT_RESTORE but CAP_SYS_RESOURCE.
SHORT_CAPBND = 0x000001FFFEFFFFFF
FULL_CAPBND = 0x000001FFFFFFFFFF


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runc_wrapper", WRAPPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rw = load()

PRIVILEGED = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_NET_ADMIN"]


def privileged_spec() -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "args": ["/sbin/init"],
            "capabilities": {
                "bounding": list(PRIVILEGED),
                "effective": list(PRIVILEGED),
                "inheritable": list(PRIVILEGED),
                "permitted": list(PRIVILEGED),
                "ambient": ["CAP_SYS_RESOURCE"],
            },
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs"},
        "linux": {"resources": {"devices": [{"allow": True, "access": "rwm"}]}},
    }


def test_missing_capabilities_follow_the_bounding_mask() -> None:
    assert rw.missing_capabilities(SHORT_CAPBND) == {"CAP_SYS_RESOURCE"}
    assert rw.missing_capabilities(FULL_CAPBND) == frozenset()
    assert rw.missing_capabilities(0) == frozenset(rw.CAPABILITIES)
    # Bit numbers are the kernel's: bit 21 is CAP_SYS_ADMIN, bit 40 CAP_CHECKPOINT_RESTORE.
    assert "CAP_SYS_ADMIN" in rw.missing_capabilities(FULL_CAPBND & ~(1 << 21))
    assert rw.missing_capabilities(FULL_CAPBND & ~(1 << 40)) == {"CAP_CHECKPOINT_RESTORE"}


def test_capbnd_is_read_from_a_status_text() -> None:
    status = "Name:\tpython3\nCapPrm:\t000001ffffffffff\nCapBnd:\t000001fffeffffff\nSeccomp:\t0\n"
    assert rw.read_capbnd(status) == SHORT_CAPBND
    with pytest.raises(ValueError, match="CapBnd"):
        rw.read_capbnd("Name:\tx\n")


def test_spec_loses_the_missing_capability_from_every_set_and_nothing_else() -> None:
    spec = privileged_spec()
    before = copy.deepcopy(spec)
    new, removed = rw.restrict_spec(spec, rw.missing_capabilities(SHORT_CAPBND))
    assert removed == ["CAP_SYS_RESOURCE"]
    kept = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_SYS_TIME", "CAP_NET_ADMIN"]  # order kept
    for key in ("bounding", "effective", "inheritable", "permitted"):
        assert new["process"]["capabilities"][key] == kept
    assert new["process"]["capabilities"]["ambient"] == []
    assert spec == before  # the input is not modified
    expected = copy.deepcopy(before)
    expected["process"]["capabilities"] = new["process"]["capabilities"]
    assert new == expected


def test_a_full_bounding_set_changes_nothing() -> None:
    spec = privileged_spec()
    new, removed = rw.restrict_spec(spec, rw.missing_capabilities(FULL_CAPBND))
    assert removed == []
    assert new == spec


def test_unknown_names_and_odd_shapes_are_left_to_runc() -> None:
    spec = privileged_spec()
    spec["process"]["capabilities"]["bounding"].append("CAP_FROM_THE_FUTURE")
    spec["process"]["capabilities"]["effective"] = None
    new, removed = rw.restrict_spec(spec, {"CAP_SYS_RESOURCE"})
    assert removed == ["CAP_SYS_RESOURCE"]
    assert new["process"]["capabilities"]["bounding"][-1] == "CAP_FROM_THE_FUTURE"
    assert new["process"]["capabilities"]["effective"] is None
    assert rw.restrict_spec({"ociVersion": "1.0.2"}, {"CAP_SYS_RESOURCE"}) == (
        {"ociVersion": "1.0.2"},
        [],
    )
    assert rw.restrict_spec({"process": {"args": ["sh"]}}, {"CAP_SYS_RESOURCE"})[1] == []


def test_an_exec_process_file_is_restricted_like_the_spec_process() -> None:
    process = privileged_spec()["process"]
    new, removed = rw.restrict_process(process, {"CAP_SYS_RESOURCE"})
    assert removed == ["CAP_SYS_RESOURCE"]
    assert "CAP_SYS_RESOURCE" not in json.dumps(new)
    assert new["args"] == ["/sbin/init"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # as containerd's runc shim calls it (go-runc): global options, then the command
        (
            [
                "--root",
                "/run/docker/runtime-runc/moby",
                "--log",
                "/b/log.json",
                "--log-format",
                "json",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/b/init.pid",
                "id",
            ],
            ("spec", "/b/config.json"),
        ),
        (["--root=/r", "create", "-b", "/b2", "id"], ("spec", "/b2/config.json")),
        (["run", "--bundle=/b3", "id"], ("spec", "/b3/config.json")),
        (["--debug", "create", "id"], ("spec", "/cwd/config.json")),  # bundle defaults to cwd
        (["create", "--bundle", "rel", "id"], ("spec", "/cwd/rel/config.json")),
        (
            ["--log", "x", "exec", "--process", "/tmp/runc-process1", "--detach", "id"],
            ("process", "/tmp/runc-process1"),
        ),
        (["exec", "-p", "/tmp/p2", "id"], ("process", "/tmp/p2")),
        (["exec", "id", "sh"], None),  # no process file: nothing to read
        (["start", "id"], None),
        (["delete", "--force", "id"], None),
        (["--root", "create", "state", "id"], None),  # "create" is --root's value here
        ([], None),
    ],
)
def test_which_file_a_runc_call_reads(argv: list[str], expected: tuple[str, str] | None) -> None:
    assert rw.file_to_restrict(argv, "/cwd") == expected


FAKE_RUNC = """#!/bin/sh
# Records how it was called and the config it was given.
printf '%s\\n' "$@" > "$OUT/argv"
cp "$OUT/bundle/config.json" "$OUT/seen.json"
exit 7
"""


def test_the_wrapper_rewrites_the_bundle_then_execs_runc_unchanged(
    tmp_path: Path,
) -> None:
    wrapper = tmp_path / "runc-wrapper"
    shutil.copy(WRAPPER, wrapper)
    fake = tmp_path / "runc"
    fake.write_text(FAKE_RUNC)
    fake.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(privileged_spec()))
    (bundle / "config.json").chmod(0o600)
    args = ["--root", "/r", "--log-format", "json", "create", "--bundle", str(bundle), "cid"]
    env = {**os.environ, "CRI_PY_REAL_RUNC": str(fake), "OUT": str(tmp_path)}
    done = subprocess.run([sys.executable, str(wrapper), *args], env=env, check=False)
    assert done.returncode == 7  # runc's own status: the wrapper exec'd it
    assert (tmp_path / "argv").read_text().splitlines() == args

    # What the wrapper removes is what this machine's bounding set lacks (the same for the
    # wrapper's child here as for the one dockerd starts).
    missing = rw.missing_capabilities(rw.read_capbnd(Path("/proc/self/status").read_text()))
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen == rw.restrict_spec(privileged_spec(), missing)[0]
    assert oct((bundle / "config.json").stat().st_mode & 0o777) == oct(0o600)
    removed = sorted(set(PRIVILEGED) & missing)
    log = tmp_path / "runc-wrapper.log"
    if removed:
        assert f"dropped {' '.join(removed)}" in log.read_text()
    else:
        assert not log.exists()
    assert not list(bundle.glob("*.cri-py-tmp"))
