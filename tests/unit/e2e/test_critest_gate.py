"""The critest gate: counts from JUnit, the floor, and the must-pass list."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "e2e"))

import critest_gate

JUNIT = """<?xml version="1.0"?>
<testsuites><testsuite>
  <testcase name="[SynchronizedBeforeSuite]"></testcase>
  <testcase name="[k8s.io] Runtime info version"></testcase>
  <testcase name="[k8s.io] Image Manager digest"><failure message="x"/></testcase>
  <testcase name="[k8s.io] Streaming exec"><skipped message="focus"/></testcase>
  <testcase name="[k8s.io] Runtime info conditions"></testcase>
</testsuite></testsuites>"""


def test_counts_ignore_suite_setup_nodes() -> None:
    outcome = critest_gate.read_junit(JUNIT)
    assert (len(outcome.passed), len(outcome.failed), len(outcome.skipped)) == (2, 1, 1)


def test_below_floor_or_missing_must_pass_fails() -> None:
    outcome = critest_gate.read_junit(JUNIT)
    assert critest_gate.judge(outcome, 2, ["[k8s.io] Runtime info version"]) == []
    assert critest_gate.judge(outcome, 3, []) == ["2 specs passed, below the floor of 3"]
    assert critest_gate.judge(outcome, 0, ["[k8s.io] Image Manager digest"]) == [
        "must pass but did not: [k8s.io] Image Manager digest"
    ]


def test_main_prints_the_plain_summary_line(tmp_path: Path, capsys: object) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    floor = tmp_path / "floor.txt"
    floor.write_text("# passes reached so far\n2\n")
    code = critest_gate.main([str(junit), "--floor", str(floor), "--must-pass", "/dev/null"])
    assert code == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "critest: 2 passed, 1 failed, 1 skipped" in out
