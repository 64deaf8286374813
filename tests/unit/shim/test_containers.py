"""The shim's reading of a container's end: exit reasons and the kernel's OOM counter."""

from __future__ import annotations

from pathlib import Path

from cri_py.shim.containers import exit_reason, oom_kills

OOM_CONTROL_V1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
MEMORY_EVENTS_V2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 0\n"


def test_oom_kill_counter_of_v1_and_v2_files(tmp_path: Path) -> None:
    (tmp_path / "memory.oom_control").write_text(OOM_CONTROL_V1)
    (tmp_path / "memory.events").write_text(MEMORY_EVENTS_V2)
    assert oom_kills(str(tmp_path / "memory.oom_control")) == 1
    assert oom_kills(str(tmp_path / "memory.events")) == 2
    assert oom_kills(str(tmp_path / "missing")) == 0
    assert oom_kills("") == 0


def test_an_oom_kill_makes_a_failed_exit_oomkilled() -> None:
    assert exit_reason(137, oom_kills=1) == "OOMKilled"
    assert exit_reason(137) == "Error"
    assert exit_reason(1, oom_kills=1) == "OOMKilled"  # the shell whose child was the victim
    assert exit_reason(0, oom_kills=1) == "Completed"
