"""Reads critest's JUnit report and decides whether a run is good enough.

Prints `N passed, N failed, N skipped`, then fails (exit 1) when fewer specs passed than the
floor in e2e/critest-floor.txt or when a spec named in e2e/critest-must-pass.txt (one exact
spec name per line) did not pass. The floor only ever goes up: raise it when cri-py passes more.
Usage: critest_gate.py JUNIT_XML [--floor FILE] [--must-pass FILE]
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent


@dataclass
class Outcome:
    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)


def read_junit(text: str) -> Outcome:
    outcome = Outcome()
    for case in ET.fromstring(text).iter("testcase"):
        name = case.get("name", "")
        if name.startswith("[SynchronizedBeforeSuite]") or name.startswith("[BeforeSuite]"):
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            outcome.failed.add(name)
        elif case.find("skipped") is not None:
            outcome.skipped.add(name)
        else:
            outcome.passed.add(name)
    return outcome


def read_list(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def judge(outcome: Outcome, floor: int, must_pass: list[str]) -> list[str]:
    """The reasons the run is not good enough (empty: it is)."""
    problems = []
    if len(outcome.passed) < floor:
        problems.append(f"{len(outcome.passed)} specs passed, below the floor of {floor}")
    problems += [
        f"must pass but did not: {name}" for name in must_pass if name not in outcome.passed
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", type=Path)
    parser.add_argument("--floor", type=Path, default=HERE / "critest-floor.txt")
    parser.add_argument("--must-pass", type=Path, default=HERE / "critest-must-pass.txt")
    args = parser.parse_args(argv)
    outcome = read_junit(args.junit.read_text())
    floor_lines = read_list(args.floor)
    floor = int(floor_lines[0]) if floor_lines else 0
    for name in sorted(outcome.failed):
        print(f"FAILED: {name}")
    print(
        f"critest: {len(outcome.passed)} passed, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} skipped"
    )
    problems = judge(outcome, floor, read_list(args.must_pass))
    for problem in problems:
        print(f"critest gate: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
