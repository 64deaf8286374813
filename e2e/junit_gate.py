"""Judges a suite's JUnit report by name: critest, the node e2e suite, the conformance run.

Prints the failed tests and `<label>: N passed, N failed, N skipped`, then exits 1 when a test
failed that the expected-failures file does not list, or when a listed test passed (its line
must go: the list only shrinks), or when nothing passed. A listed test that did not run
(skipped, or absent from the report) is reported and does not fail the gate.
Exit 2: the report or the list cannot be read.

The expected-failures file has one test per line, `<exact JUnit name> | <reason>` (the name is
everything before the last " | "); lines starting with '#' and blank lines are ignored.
With --compare BASELINE_XML (the same suite on another runtime: containerd for the node e2e
suite), it judges the report against that baseline instead: both summaries, then each failure
of the report classified as failing on the baseline too, passing there (the runtime's own
defect), or not run there; exit 1 when a test passes on the baseline and fails in the report.

The baseline is a JUnit report or a baseline file that --write-baseline made from one: a
sorted `<passed|failed|skipped> | <exact name>` line per test, small enough to commit, so a
run can be compared with a baseline it did not run (e2e/node-e2e-containerd-baseline.txt).

Usage: junit_gate.py JUNIT_XML --expected FILE [--label NAME]
       junit_gate.py JUNIT_XML --report-only      (summary only, exit 0)
       junit_gate.py JUNIT_XML --compare BASELINE [--label NAME] [--baseline-label NAME]
       junit_gate.py JUNIT_XML --write-baseline FILE [--header TEXT]
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

# Ginkgo writes its suite-level nodes as test cases: not tests, but their failure is a failure.
SUITE_NODES = (
    "[BeforeSuite]",
    "[SynchronizedBeforeSuite]",
    "[AfterSuite]",
    "[SynchronizedAfterSuite]",
    "[DeferCleanup (Suite)]",
    "[ReportBeforeSuite]",
    "[ReportAfterSuite]",
)
SEPARATOR = " | "


class GateInputError(Exception):
    """The report or the expected-failures list is unreadable or malformed."""


@dataclass
class Outcome:
    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)


def read_junit(text: str) -> Outcome:
    """Passed, failed and skipped test names. A name reported twice (a retry, a suite run
    twice) counts as failed if any run failed, else passed if any run passed."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise GateInputError(f"not a JUnit XML report: {e}") from e
    if root.tag not in ("testsuites", "testsuite"):
        raise GateInputError(f"not a JUnit XML report: root element <{root.tag}>")
    outcome = Outcome()
    for case in root.iter("testcase"):
        name = case.get("name")
        if not name:
            raise GateInputError("a <testcase> has no name")
        if case.find("failure") is not None or case.find("error") is not None:
            outcome.failed.add(name)
        elif name.startswith(SUITE_NODES):
            continue
        elif case.find("skipped") is not None:
            outcome.skipped.add(name)
        else:
            outcome.passed.add(name)
    outcome.passed -= outcome.failed
    outcome.skipped -= outcome.failed | outcome.passed
    return outcome


_STATUSES = ("passed", "failed", "skipped")


def write_baseline(outcome: Outcome, header: str = "") -> str:
    """The baseline file's text: `header` as comment lines, then one line per test."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for status in _STATUSES:
        names: set[str] = getattr(outcome, status)
        lines += [f"{status}{SEPARATOR}{name}" for name in sorted(names)]
    return "\n".join(lines) + "\n"


def read_baseline(text: str) -> Outcome:
    """A JUnit report, or a file write_baseline made."""
    if text.lstrip().startswith("<"):
        return read_junit(text)
    outcome = Outcome()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        status, sep, name = line.partition(SEPARATOR)
        if not sep or status not in _STATUSES or not name.strip():
            raise GateInputError(
                f"baseline line {number}: want '<passed|failed|skipped>{SEPARATOR}<name>', "
                f"got {line!r}"
            )
        getattr(outcome, status).add(name.strip())
    if not (outcome.passed | outcome.failed | outcome.skipped):
        raise GateInputError("the baseline lists no test")
    return outcome


def read_expected(text: str) -> dict[str, str]:
    """Name -> reason, from the expected-failures file."""
    expected: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, reason = line.rpartition(SEPARATOR)
        name, reason = name.strip(), reason.strip()
        if not sep or not name or not reason:
            raise GateInputError(
                f"line {number}: want '<exact test name>{SEPARATOR}<reason>', got {line!r}"
            )
        if name in expected:
            raise GateInputError(f"line {number}: {name!r} is listed twice")
        expected[name] = reason
    return expected


@dataclass
class Verdict:
    problems: list[str]  # each one fails the gate
    notes: list[str]  # reported, not failing


def judge(outcome: Outcome, expected: dict[str, str], list_name: str) -> Verdict:
    problems = [f"unexpected failure: {name}" for name in sorted(outcome.failed - expected.keys())]
    problems += [
        f"listed in {list_name} but passed (remove its line): {name}"
        for name in sorted(expected.keys() & outcome.passed)
    ]
    if not outcome.passed:
        problems.append("no test passed")
    notes = [
        f"expected failure: {name} ({expected[name]})"
        for name in sorted(expected.keys() & outcome.failed)
    ]
    notes += [
        f"listed in {list_name} but skipped: {name}"
        for name in sorted(expected.keys() & outcome.skipped)
    ]
    seen = outcome.passed | outcome.failed | outcome.skipped
    notes += [
        f"listed in {list_name} but not in the report: {name}"
        for name in sorted(expected.keys() - seen)
    ]
    return Verdict(problems, notes)


@dataclass
class Comparison:
    regressions: list[str]  # pass on the baseline, fail in the report: the runtime's defects
    both: list[str]  # fail on both
    not_on_baseline: list[str]  # fail in the report, skipped or absent on the baseline
    baseline_only: list[str]  # fail on the baseline, pass in the report


def compare(report: Outcome, baseline: Outcome) -> Comparison:
    seen = baseline.passed | baseline.failed
    return Comparison(
        regressions=sorted(report.failed & baseline.passed),
        both=sorted(report.failed & baseline.failed),
        not_on_baseline=sorted(report.failed - seen),
        baseline_only=sorted(baseline.failed & report.passed),
    )


def summary(label: str, outcome: Outcome) -> str:
    return (
        f"{label}: {len(outcome.passed)} passed, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} skipped"
    )


def main_compare(report: Outcome, baseline: Outcome, label: str, base: str) -> int:
    result = compare(report, baseline)
    print(summary(label, report))
    print(summary(base, baseline))
    for name in result.regressions:
        print(f"passes on {base}, fails on {label}: {name}")
    for name in result.both:
        print(f"fails on both: {name}")
    for name in result.not_on_baseline:
        print(f"fails on {label}, not run on {base}: {name}")
    for name in result.baseline_only:
        print(f"fails on {base}, passes on {label}: {name}")
    print(
        f"{label} vs {base}: {len(result.regressions)} pass on {base} and fail on {label}, "
        f"{len(result.both)} fail on both, {len(result.not_on_baseline)} fail on {label} "
        f"and did not run on {base}, {len(result.baseline_only)} fail on {base} only"
    )
    if result.regressions:
        print(
            f"{label} gate: FAIL: {len(result.regressions)} passing on {base} fail on {label}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("junit", type=Path)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--expected", type=Path, help="the expected-failures file")
    mode.add_argument("--report-only", action="store_true", help="print the summary, exit 0")
    mode.add_argument("--compare", type=Path, help="the same suite's report on a baseline")
    mode.add_argument("--write-baseline", type=Path, help="write the report as a baseline file")
    parser.add_argument("--header", default="", help="--write-baseline: its comment lines")
    parser.add_argument("--label", default="", help="the suite's name in the summary line")
    parser.add_argument("--baseline-label", default="baseline", help="the baseline's name")
    args = parser.parse_args(argv)
    label = args.label or args.junit.stem
    try:
        outcome = read_junit(read_text(args.junit))
        if args.compare:
            baseline = read_baseline(read_text(args.compare))
            return main_compare(outcome, baseline, label, args.baseline_label)
        if args.write_baseline:
            args.write_baseline.write_text(write_baseline(outcome, args.header))
            print(f"{summary(label, outcome)}; written to {args.write_baseline}")
            return 0
        expected = {} if args.report_only else read_expected(read_text(args.expected))
    except GateInputError as e:
        print(f"{label} gate: {e}", file=sys.stderr)
        return 2
    for name in sorted(outcome.failed):
        print(f"FAILED: {name}")
    print(summary(label, outcome))
    if args.report_only:
        return 0
    verdict = judge(outcome, expected, args.expected.name)
    for note in verdict.notes:
        print(f"{label} gate: {note}")
    for problem in verdict.problems:
        print(f"{label} gate: FAIL: {problem}", file=sys.stderr)
    return 1 if verdict.problems else 0


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GateInputError(f"cannot read {path}: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
