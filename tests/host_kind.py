"""Skips about what kind of host this is, the only skips CI accepts.

With CRI_PY_REQUIRE_LAB=1 (CI), tests/conftest.py turns every skip into a failure except those
made here: a test skips with `skip_host_kind(kind, detail)` when the host is of a kind the test
does not apply to (cgroup v2 for a test that proves v1), never because something the lab
provides is missing (root, the registry, crictl, iptables). The kinds are the short list below;
adding one is a reviewed change to this file.
"""

from __future__ import annotations

import re
from typing import NoReturn

import pytest

HOST_KINDS = {
    "cgroup-v2": "the host's cgroups are v2 (unified); the test proves the v1 files",
    "no-cgroup2": "the host has no cgroup2 mount at all (pure v1): nothing to attach BPF to",
    "hugetlb-mounted": "the host mounts hugetlb, so there is no absent controller to test",
}

_REASON = re.compile(r"host kind \(([a-z0-9-]+)\): ")


def host_kind_reason(kind: str, detail: str) -> str:
    """The skip reason for `kind` (for `pytest.mark.skipif(..., reason=...)`)."""
    if kind not in HOST_KINDS:
        raise ValueError(f"unknown host kind {kind!r}: add it to tests/host_kind.py first")
    return f"host kind ({kind}): {detail}"


def skip_host_kind(kind: str, detail: str) -> NoReturn:
    """Skip the test because of what the host is, not what it lacks."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    pytest.skip(host_kind_reason(kind, detail))


def host_kind_of(reason: str) -> str | None:
    """The allowlisted host kind a skip reason names, or None."""
    match = _REASON.match(reason.removeprefix("Skipped: "))
    if match is None or match.group(1) not in HOST_KINDS:
        return None
    return match.group(1)
