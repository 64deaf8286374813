"""The cgroup v2 device filter against the real kernel: the verifier accepts every golden
program, and a process in a cgroup carrying the filter opens what the rules allow and gets
EPERM for the rest. Runs on a pure v2 host and on a hybrid one (its cgroup2 mount, where
device programs are enforced too); skips without a cgroup2 mount."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_py.linux import syscalls
from cri_py.linux.device_filter import LICENSE, attach_device_filter
from cri_py.oci.device_filter import device_program, encode
from cri_py.spec.devices import DEFAULT_RULES
from tests.host_kind import skip_host_kind

from .conftest import needs_root

pytestmark = needs_root

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "oci" / "golden" / "device_filter"


def cgroup2_mount() -> Path | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return Path(fields[4])
    return None


@pytest.fixture
def cgroup_dir() -> Iterator[Path]:
    mount = cgroup2_mount()
    if mount is None:
        skip_host_kind("no-cgroup2", "no cgroup2 mount on this host")
    directory = mount / "cri-py-tests" / f"device-filter-{secrets.token_hex(4)}"
    directory.mkdir(parents=True)
    try:
        yield directory
    finally:
        directory.rmdir()
        with contextlib.suppress(OSError):  # another test's cgroup may be there
            directory.parent.rmdir()


@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.glob("*.rules.json")))
def test_the_kernel_verifier_accepts_every_golden_program(case: str) -> None:
    rules = json.loads((GOLDEN / case).read_text())
    fd = syscalls.bpf_prog_load(
        syscalls.BPF_PROG_TYPE_CGROUP_DEVICE, encode(device_program(rules)), LICENSE, "probe"
    )
    os.close(fd)


def open_in_cgroup(directory: Path, paths: list[str]) -> dict[str, int]:
    """errno (0: opened) of opening each path read-only, from a child inside the cgroup."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            (directory / "cgroup.procs").write_text(str(os.getpid()))
            results = {}
            for path in paths:
                try:
                    os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                    results[path] = 0
                except OSError as e:
                    results[path] = e.errno or -1
            os.write(write_end, json.dumps(results).encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return {k: int(v) for k, v in json.loads(data).items()}


def test_a_filtered_cgroup_opens_only_the_allowed_devices(cgroup_dir: Path) -> None:
    for path in ("/dev/null", "/dev/kmsg"):
        if not os.path.exists(path):
            pytest.skip(f"{path} is missing on this host")
    assert open_in_cgroup(cgroup_dir, ["/dev/null", "/dev/kmsg"]) == {
        "/dev/null": 0,
        "/dev/kmsg": 0,
    }
    attach_device_filter(cgroup_dir, list(DEFAULT_RULES))
    assert open_in_cgroup(cgroup_dir, ["/dev/null", "/dev/zero", "/dev/kmsg"]) == {
        "/dev/null": 0,
        "/dev/zero": 0,
        "/dev/kmsg": errno.EPERM,
    }
