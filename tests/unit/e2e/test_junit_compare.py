"""junit_gate.py --compare: the same suite on cri-py and on a baseline runtime (containerd),
and the specs that pass on the baseline but fail on cri-py named (cri-py's defects)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import junit_gate  # e2e/, put on the path by this directory's conftest
import pytest

from tests.unit.e2e.reports import junit as _junit


def junit(*cases: tuple[str, str]) -> str:
    return _junit(*cases, suite="E2eNode Suite", before="[SynchronizedBeforeSuite]")


E2E = Path(__file__).resolve().parents[3] / "e2e"
ENV = "[It] [sig-node] Downward API should provide pod name, namespace and IP address as env vars"
TERM = "[It] [sig-node] Container Runtime should report termination message from log output"
LOGPATH = "[It] [sig-node] ContainerLogPath should print log to correct log path"
NMETER = "[It] [sig-node] Containers Lifecycle should run init containers in order"
SYSCTL = "[It] [sig-node] Sysctls should support sysctls"
HOSTS = "[It] [sig-node] Kubelet with hostAliases should write entries to /etc/hosts"


CRI_PY = junit(
    (ENV, "passed"),
    (TERM, "failed"),
    (LOGPATH, "failed"),
    (NMETER, "failed"),
    (SYSCTL, "passed"),
    (HOSTS, "failed"),
)
CONTAINERD = junit(
    (ENV, "passed"),
    (TERM, "passed"),
    (LOGPATH, "passed"),
    (NMETER, "failed"),
    (SYSCTL, "failed"),
    (HOSTS, "skipped"),
)


def run_compare(
    tmp_path: Path, report: str, baseline: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    (tmp_path / "cri-py.xml").write_text(report)
    (tmp_path / "containerd.xml").write_text(baseline)
    code = junit_gate.main(
        [
            str(tmp_path / "cri-py.xml"),
            "--compare",
            str(tmp_path / "containerd.xml"),
            "--label",
            "cri-py",
            "--baseline-label",
            "containerd",
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_specs_passing_on_containerd_and_failing_on_cri_py_are_named_and_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_compare(tmp_path, CRI_PY, CONTAINERD, capsys)
    assert code == 1
    assert "cri-py: 2 passed, 4 failed, 0 skipped" in out
    assert "containerd: 3 passed, 2 failed, 1 skipped" in out
    lines = out.splitlines()
    assert f"passes on containerd, fails on cri-py: {LOGPATH}" in lines
    assert f"passes on containerd, fails on cri-py: {TERM}" in lines
    assert f"fails on both: {NMETER}" in lines
    assert f"fails on cri-py, not run on containerd: {HOSTS}" in lines
    assert f"fails on containerd, passes on cri-py: {SYSCTL}" in lines
    # Each failure is in exactly one class; passing specs are in none.
    assert not any(ENV in line for line in lines)
    assert sum(NMETER in line for line in lines) == 1
    assert (
        "cri-py vs containerd: 2 pass on containerd and fail on cri-py, 1 fail on both, "
        "1 fail on cri-py and did not run on containerd, 1 fail on containerd only"
    ) in lines
    assert "2 passing on containerd fail on cri-py" in err


def test_failures_shared_with_the_baseline_do_not_fail_the_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = junit((ENV, "passed"), (NMETER, "failed"), (HOSTS, "failed"))
    code, out, err = run_compare(tmp_path, report, CONTAINERD, capsys)
    assert code == 0, err
    assert "0 pass on containerd and fail on cri-py" in out
    assert "passes on containerd" not in out
    assert err == ""


def test_a_spec_that_failed_in_one_run_of_the_baseline_is_not_a_baseline_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = junit((ENV, "passed"), (TERM, "passed"), (TERM, "failed"))
    code, out, _ = run_compare(tmp_path, junit((ENV, "passed"), (TERM, "failed")), baseline, capsys)
    assert code == 0
    assert f"fails on both: {TERM}" in out


def test_an_unreadable_baseline_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cri-py.xml").write_text(CRI_PY)
    code = junit_gate.main(
        [str(tmp_path / "cri-py.xml"), "--compare", str(tmp_path / "absent.xml")]
    )
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_compare_and_expected_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        junit_gate.main(["r.xml", "--compare", "b.xml", "--expected", "e.txt"])


def test_the_script_compares_standalone(tmp_path: Path) -> None:
    (tmp_path / "cri-py.xml").write_text(CRI_PY)
    (tmp_path / "containerd.xml").write_text(CONTAINERD)
    result = subprocess.run(
        [
            sys.executable,
            str(E2E / "junit_gate.py"),
            str(tmp_path / "cri-py.xml"),
            "--compare",
            str(tmp_path / "containerd.xml"),
            "--baseline-label",
            "containerd",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert f"passes on containerd, fails on cri-py: {LOGPATH}" in result.stdout
    assert "cri-py: 2 passed, 4 failed, 0 skipped" in result.stdout


def test_a_written_baseline_file_compares_as_its_report_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "containerd.xml").write_text(CONTAINERD)
    baseline = tmp_path / "baseline.txt"
    code = junit_gate.main(
        [
            str(tmp_path / "containerd.xml"),
            "--write-baseline",
            str(baseline),
            "--header",
            "lab\nrun",
        ]
    )
    assert code == 0
    text = baseline.read_text()
    assert text.startswith("# lab\n# run\n")
    assert f"passed | {ENV}\n" in text and f"skipped | {HOSTS}\n" in text
    capsys.readouterr()
    from_xml = run_compare(tmp_path, CRI_PY, CONTAINERD, capsys)
    assert run_compare(tmp_path, CRI_PY, text, capsys) == from_xml


def test_a_malformed_or_empty_baseline_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in ("# only a comment\n", "passed\n", f"flaky | {ENV}\n", "passed | \n"):
        code, _, err = run_compare(tmp_path, CRI_PY, text, capsys)
        assert code == 2, text
        assert "baseline" in err
