"""The JUnit gate: a suite is judged by test name against an expected-failures list."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import junit_gate  # e2e/, put on the path by this directory's conftest
import pytest

from tests.unit.e2e.reports import junit

E2E = Path(__file__).resolve().parents[3] / "e2e"
DIGEST = (
    "[It] [k8s.io] Image Manager public image with digest should be pulled and removed "
    "[Conformance] [Serial]"
)
VERSION = "[It] [k8s.io] Runtime info version"
CONDITIONS = "[It] [k8s.io] Runtime info conditions"
EXEC = "[It] [k8s.io] Streaming exec"


def run_gate(
    tmp_path: Path, report: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    (tmp_path / "junit.xml").write_text(report)
    (tmp_path / "expected.txt").write_text(expected)
    code = junit_gate.main(
        [
            str(tmp_path / "junit.xml"),
            "--expected",
            str(tmp_path / "expected.txt"),
            "--label",
            "critest",
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


LISTED = f"# known gaps\n\n{DIGEST} | pinned by digest, cannot exist offline\n"
CLEAN = junit((VERSION, "passed"), (DIGEST, "failed"), (EXEC, "skipped"), (CONDITIONS, "passed"))


def test_only_listed_failures_pass_the_gate_with_the_plain_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_gate(tmp_path, CLEAN, LISTED, capsys)
    assert code == 0, err
    assert f"FAILED: {DIGEST}" in out
    assert "critest: 2 passed, 1 failed, 1 skipped" in out  # [BeforeSuite] is not a test
    assert f"expected failure: {DIGEST} (pinned by digest, cannot exist offline)" in out
    assert err == ""


def test_an_unlisted_failure_fails_the_gate_whatever_else_passed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    many = [(f"[It] spec {i}", "passed") for i in range(200)]
    report = junit(*many, (DIGEST, "failed"), (EXEC, "failed"))
    code, out, err = run_gate(tmp_path, report, LISTED, capsys)
    assert code == 1
    assert "critest: 200 passed, 2 failed, 0 skipped" in out
    assert f"unexpected failure: {EXEC}" in err
    assert DIGEST not in err


def test_an_error_element_is_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_gate(tmp_path, junit((VERSION, "passed"), (EXEC, "error")), "", capsys)
    assert code == 1
    assert f"unexpected failure: {EXEC}" in err


def test_a_listed_spec_that_passes_fails_the_gate_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = junit((VERSION, "passed"), (DIGEST, "passed"))
    code, _, err = run_gate(tmp_path, report, LISTED, capsys)
    assert code == 1
    assert f"listed in expected.txt but passed (remove its line): {DIGEST}" in err


def test_a_listed_spec_that_did_not_run_is_reported_not_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = "[It] [k8s.io] Gone from this critest version"
    expected = LISTED + f"{absent} | removed upstream\n"
    report = junit((VERSION, "passed"), (DIGEST, "skipped"))
    code, out, err = run_gate(tmp_path, report, expected, capsys)
    assert code == 0, err
    assert f"listed in expected.txt but skipped: {DIGEST}" in out
    assert f"listed in expected.txt but not in the report: {absent}" in out


def test_a_failed_suite_node_is_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = junit((VERSION, "passed"), ("[SynchronizedBeforeSuite]", "failed"))
    code, out, err = run_gate(tmp_path, report, "", capsys)
    assert code == 1
    assert "1 passed, 1 failed" in out
    assert "unexpected failure: [SynchronizedBeforeSuite]" in err


def test_a_name_that_failed_once_counts_as_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = junit((VERSION, "passed"), (EXEC, "failed"), (EXEC, "passed"))
    code, out, err = run_gate(tmp_path, report, "", capsys)
    assert code == 1
    assert "1 passed, 1 failed, 0 skipped" in out
    assert f"unexpected failure: {EXEC}" in err


def test_a_run_where_nothing_passed_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_gate(tmp_path, junit((DIGEST, "failed"), (EXEC, "skipped")), LISTED, capsys)
    assert code == 1
    assert "no test passed" in err
    empty = '<?xml version="1.0"?><testsuites><testsuite name="x"/></testsuites>'
    code, out, err = run_gate(tmp_path, empty, "", capsys)
    assert code == 1
    assert "0 passed, 0 failed, 0 skipped" in out
    assert "no test passed" in err


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ("", "not a JUnit XML report"),
        ("<testsuites><testsuite><testcase name='a'>", "not a JUnit XML report"),
        ("<html><body>502 Bad Gateway</body></html>", "root element <html>"),
        ("<testsuites><testsuite><testcase/></testsuite></testsuites>", "has no name"),
    ],
)
def test_a_malformed_report_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], report: str, message: str
) -> None:
    code, out, err = run_gate(tmp_path, report, LISTED, capsys)
    assert code == 2
    assert message in err
    assert "passed" not in out


def test_a_missing_report_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = junit_gate.main([str(tmp_path / "junit.xml"), "--expected", "/dev/null"])
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        (f"{DIGEST}\n", "line 1: want '<exact test name> | <reason>'"),
        (f"# gaps\n{DIGEST} |   \n", "line 2: want"),
        (f"{DIGEST} | one\n{DIGEST} | two\n", "line 2: "),
    ],
)
def test_a_malformed_expected_list_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], expected: str, message: str
) -> None:
    code, _, err = run_gate(tmp_path, CLEAN, expected, capsys)
    assert code == 2
    assert message in err


def test_a_name_with_a_pipe_is_read_whole() -> None:
    name = "[It] [k8s.io] Image Manager image status fields should not have Uid|Username empty"
    assert junit_gate.read_expected(f"{name} | why\n") == {name: "why"}


def test_report_only_prints_the_summary_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junit.xml").write_text(junit((EXEC, "failed")))
    code = junit_gate.main([str(tmp_path / "junit.xml"), "--report-only", "--label", "critest"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"FAILED: {EXEC}" in out
    assert "critest: 0 passed, 1 failed, 0 skipped" in out


def test_the_critest_list_names_only_the_digest_pinned_image() -> None:
    listed = junit_gate.read_expected((E2E / "critest-expected-failures.txt").read_text())
    assert list(listed) == [DIGEST]


def test_the_script_runs_standalone_with_the_critest_list(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(junit((VERSION, "passed"), (EXEC, "failed")))
    result = subprocess.run(
        [
            sys.executable,
            str(E2E / "junit_gate.py"),
            str(tmp_path / "junit.xml"),
            "--expected",
            str(E2E / "critest-expected-failures.txt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "junit: 1 passed, 1 failed, 0 skipped" in result.stdout
    assert f"unexpected failure: {EXEC}" in result.stderr
    assert f"not in the report: {DIGEST}" in result.stdout


def test_the_committed_conformance_baseline_and_list_agree() -> None:
    """containerd's whole-suite run (e2e/conformance-containerd-baseline.txt) parses, and what
    failed there is what the cri-py list expects (a spec failing on both is the lab's)."""
    baseline = junit_gate.read_baseline((E2E / "conformance-containerd-baseline.txt").read_text())
    assert (len(baseline.passed), len(baseline.failed)) == (461, 1)
    listed = junit_gate.read_expected((E2E / "conformance-expected-failures.txt").read_text())
    assert set(listed) == baseline.failed
    assert all("containerd fails it too" in reason for reason in listed.values())
