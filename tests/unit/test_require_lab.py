"""tests/conftest.py: under CRI_PY_REQUIRE_LAB=1 a skip for a missing lab, tool or root fails;
a host-kind skip (tests/host_kind.py) stays a skip; without the switch both skip. Each case runs
a real pytest, in a subprocess, on a small test file using the project's conftest as a plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.host_kind import host_kind_of, host_kind_reason

TOP = Path(__file__).resolve().parents[2]

SAMPLE = """
import pytest
from tests.host_kind import skip_host_kind

def test_lab_missing():
    pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")

@pytest.mark.skipif(True, reason="needs root (namespaces, /run)")
def test_not_root():
    pass

@pytest.fixture(scope="module")
def crictl():
    pytest.skip("no crictl (make tools)")

def test_tool_missing_in_a_fixture(crictl):
    pass

def test_host_kind():
    skip_host_kind("cgroup-v2", "this test proves cgroup v1")

def test_forged_host_kind():
    pytest.skip("host kind (laptop): no lab here")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_to_fail():
    assert False

def test_passes():
    pass
"""


def run_sample(tmp_path: Path, source: str, switch: str | None) -> tuple[dict[str, str], str, int]:
    """Outcome per test name (passed, failure, error, skipped), pytest's output and exit code."""
    (tmp_path / "test_sample.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CRI_PY_REQUIRE_LAB"}
    if switch is not None:
        env["CRI_PY_REQUIRE_LAB"] = switch
    env["PYTHONPATH"] = str(TOP)
    report = tmp_path / "junit.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-c", os.devnull,
         "-p", "tests.conftest", "-p", "no:cacheprovider", "-p", "no:asyncio",
         f"--rootdir={tmp_path}", f"--junitxml={report}", str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    outcomes: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name", "")] = kinds[0] if kinds else "passed"
    return outcomes, result.stdout + result.stderr, result.returncode


def test_under_the_switch_a_missing_lab_fails_and_a_host_kind_still_skips(
    tmp_path: Path,
) -> None:
    outcomes, output, code = run_sample(tmp_path, SAMPLE, "1")
    assert code == 1, output
    assert outcomes == {
        "test_lab_missing": "failure",
        "test_not_root": "error",  # a skipif mark skips in setup: the setup fails
        "test_tool_missing_in_a_fixture": "error",
        "test_host_kind": "skipped",
        "test_forged_host_kind": "failure",  # not an allowlisted kind
        "test_expected_to_fail": "skipped",  # JUnit's word for xfailed: left alone
        "test_passes": "passed",
    }, output
    assert "CRI_PY_REQUIRE_LAB=1: this would have skipped" in output
    assert "skips turned into failures (CRI_PY_REQUIRE_LAB=1): 4, by reason" in output
    assert "1  needs root (namespaces, /run)" in output
    assert "1 skipped, by reason" in output
    assert "1  host kind (cgroup-v2): this test proves cgroup v1" in output


def test_without_the_switch_every_skip_skips_and_is_counted_by_reason(tmp_path: Path) -> None:
    for switch in (None, "0", ""):
        outcomes, output, code = run_sample(tmp_path, SAMPLE, switch)
        assert code == 0, output
        skipped = {name for name, outcome in outcomes.items() if outcome == "skipped"}
        assert skipped == set(outcomes) - {"test_passes"}, output
        assert "5 skipped, by reason" in output
        assert "1  no crictl (make tools)" in output
        assert "SKIPPED [1]" in output  # -rs lists each with its place
        assert "turned into failures" not in output


def test_a_module_level_skip_fails_collection_under_the_switch(tmp_path: Path) -> None:
    source = 'import pytest\npytest.skip("needs iptables", allow_module_level=True)\n'
    _, output, code = run_sample(tmp_path, source, "1")
    assert code == 2, output  # interrupted: an error during collection
    assert "CRI_PY_REQUIRE_LAB=1: this would have skipped" in output
    assert "needs iptables" in output
    _, output, code = run_sample(tmp_path, source, None)
    assert code == 5, output  # no tests collected
    assert "1 skipped" in output


def test_only_allowlisted_host_kinds_are_accepted() -> None:
    assert host_kind_of("Skipped: host kind (cgroup-v2): proves v1") == "cgroup-v2"
    assert host_kind_of(host_kind_reason("no-cgroup2", "pure v1 host")) == "no-cgroup2"
    assert host_kind_of("host kind (anything-else): x") is None
    assert host_kind_of("the registry is down; host kind (cgroup-v2): x") is None
    with pytest.raises(ValueError, match="unknown host kind 'laptop'"):
        host_kind_reason("laptop", "no lab")
