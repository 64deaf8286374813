"""Running one OCI hook: argv, only its env, the state on stdin, failures and timeouts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cri_py.oci.hooks import Hook
from cri_py.shim.hooks import HookFailed, run_hook, run_hooks, run_hooks_logged

STATE = json.dumps({"id": "c1", "status": "creating", "pid": 1, "bundle": "/b"}).encode()


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_a_hook_gets_its_argv_only_its_env_and_the_state_on_stdin(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        "h",
        f'echo "$0|$1|$2" > {tmp_path}/argv\nenv > {tmp_path}/env\ncat > {tmp_path}/stdin\n'
        f"for fd in /proc/$$/fd/*; do readlink $fd || true; done > {tmp_path}/fds\n",
    )
    os.environ["CRI_PY_TEST_LEAK"] = "1"
    try:
        run_hook("createRuntime", Hook(path, ("name0", "a", "b c"), ("ONLY=1",)), STATE)
    finally:
        del os.environ["CRI_PY_TEST_LEAK"]
    assert (tmp_path / "argv").read_text() == f"{path}|a|b c\n"  # a script's $0 is its path
    env = (tmp_path / "env").read_text()
    assert "ONLY=1" in env.splitlines() and "CRI_PY_TEST_LEAK" not in env
    assert json.loads((tmp_path / "stdin").read_text()) == json.loads(STATE)
    # The shell's descriptors: the state and output pipes, its script, the file it writes
    # to (a saved copy of its stdout too): nothing of the caller's (this test holds others).
    targets = set((tmp_path / "fds").read_text().split())
    allowed = {path, str(tmp_path / "fds")}
    assert all(t.startswith("pipe:") or t in allowed for t in targets), targets


def test_a_failing_hook_raises_with_its_status_and_output(tmp_path: Path) -> None:
    path = script(tmp_path, "bad", "echo 'no GPU here' >&2\nexit 3\n")
    with pytest.raises(HookFailed, match=r"createRuntime hook .*bad: exited with status 3: no GPU"):
        run_hook("createRuntime", Hook(path), STATE)
    with pytest.raises(HookFailed, match="could not be started"):
        run_hook("prestart", Hook(str(tmp_path / "missing")), STATE)


def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    path = script(tmp_path, "hang", f"sleep 60 & echo $! > {pids}\necho $$ >> {pids}\nwait\n")
    began = time.monotonic()
    with pytest.raises(HookFailed, match=r"still running after 1s, killed"):
        run_hook("createRuntime", Hook(path, timeout=1), STATE)
    assert time.monotonic() - began < 5
    for pid in map(int, pids.read_text().split()):
        # Gone, or a zombie waiting for whoever adopted it: the whole group was killed (a
        # SIGKILLed process may still show as running for a moment while it dies).
        deadline = time.monotonic() + 5
        while True:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                break
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                break
            assert time.monotonic() < deadline, f"still alive 5 s after the kill: {stat}"
            time.sleep(0.01)


def test_the_first_failure_stops_the_rest_unless_failures_are_only_logged(
    tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    ok = script(tmp_path, "ok", f"echo ran >> {marks}\n")
    bad = script(tmp_path, "bad", "exit 1\n")
    with pytest.raises(HookFailed):
        run_hooks("createRuntime", (Hook(bad), Hook(ok)), STATE)
    assert not marks.exists()
    warnings: list[str] = []
    failed = run_hooks_logged("poststop", (Hook(bad), Hook(ok)), STATE, warnings.append)
    assert failed == 1 and marks.read_text() == "ran\n"
    assert "poststop hook" in warnings[0]
    # The daemon's variant (no Python code between fork and exec) behaves the same.
    assert run_hooks_logged("poststop", (Hook(ok),), STATE, warnings.append, threaded=True) == 0
    assert marks.read_text() == "ran\nran\n"
