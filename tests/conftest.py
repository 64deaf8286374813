"""Skips that cannot hide: counted by reason, and failures under CRI_PY_REQUIRE_LAB=1.

Without the lab (registry, images, crictl, iptables...) or root, many tests skip with a reason.
That is right on a laptop and wrong in CI: CI sets CRI_PY_REQUIRE_LAB=1, and then a test that
would skip fails instead, unless it skipped through tests/host_kind.py because of what the host
is (cgroup v2 for a v1 test). Every run ends with the skips counted by reason.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator

import pytest

from tests.host_kind import host_kind_of

# The unit tests run gRPC servers and fork setup processes in one process; gRPC's fork handlers
# then find "other threads calling into gRPC", skip, and the forked child dies in setup (which
# test failed depended on the order). Off for this process only, read as grpc is imported: the
# daemons the tests start get the environment a deployed one has.
_fork_support = os.environ.get("GRPC_ENABLE_FORK_SUPPORT")
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
import grpc  # noqa: E402
import grpc.aio  # noqa: E402,F401

if _fork_support is None:
    del os.environ["GRPC_ENABLE_FORK_SUPPORT"]
else:
    os.environ["GRPC_ENABLE_FORK_SUPPORT"] = _fork_support

SWITCH = "CRI_PY_REQUIRE_LAB"
_TURNED = pytest.StashKey[list[str]]()


def require_lab() -> bool:
    return os.environ.get(SWITCH, "") not in ("", "0")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def skip_place(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return f"{longrepr[0]}:{longrepr[1]}"
    return report.nodeid


def turn_into_failure(
    config: pytest.Config, report: pytest.TestReport | pytest.CollectReport
) -> None:
    """A skip that is not about the kind of host fails the test under the switch."""
    if not require_lab() or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if host_kind_of(reason) is not None:
        return
    config.stash.setdefault(_TURNED, []).append(reason)
    report.outcome = "failed"
    report.longrepr = (
        f"{SWITCH}=1: this would have skipped ({skip_place(report)}: {reason}). "
        "CI must provide root and the lab (make registry images, make tools, the packages of "
        "e2e/apt-packages.txt); a skip about the kind of host goes through tests/host_kind.py."
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    turn_into_failure(item.config, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    turn_into_failure(collector.config, report)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reasons = Counter(
        skip_reason(report)
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report, pytest.TestReport | pytest.CollectReport)
    )
    if reasons:
        terminalreporter.write_sep("=", f"{sum(reasons.values())} skipped, by reason")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:5d}  {reason}")
        if not require_lab():
            terminalreporter.write_line(
                f"(under {SWITCH}=1, as in CI, every skip above fails unless it is a host kind)"
            )
    turned_reasons: list[str] = terminalreporter.config.stash.get(_TURNED, [])
    turned = Counter(turned_reasons)
    if turned:
        terminalreporter.write_sep(
            "=",
            f"skips turned into failures ({SWITCH}=1): {sum(turned.values())}, by reason",
            red=True,
        )
        for reason, count in turned.most_common():
            terminalreporter.write_line(f"{count:5d}  {reason}")
