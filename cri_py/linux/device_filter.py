"""A cgroup v2 device filter put in place: the program built by `cri_py.oci.device_filter`,
loaded and attached to a cgroup directory. The attachment holds the program: the fd is closed
here, and the filter goes with the cgroup."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cri_py.linux import syscalls
from cri_py.oci.device_filter import device_program, encode

# Shown by `bpftool prog` (names allow letters, digits, '_' and '.').
PROGRAM_NAME = "cri_py_devices"
# A program with no GPL-only helpers may carry any licence: the project's.
LICENSE = "Apache-2.0"


def attach_device_filter(cgroup_dir: Path, rules: Sequence[Mapping[str, Any]]) -> None:
    """Devices of processes in `cgroup_dir` (a cgroup v2 directory) are checked against
    `rules`. ALLOW_MULTI: programs its ancestors carry (kubelet's, another runtime's) still
    run, and a request must pass them all, as nested v1 device lists behave."""
    program = encode(device_program(rules))
    prog_fd = syscalls.bpf_prog_load(
        syscalls.BPF_PROG_TYPE_CGROUP_DEVICE, program, LICENSE, PROGRAM_NAME
    )
    try:
        dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.bpf_prog_attach(
                dir_fd, prog_fd, syscalls.BPF_CGROUP_DEVICE, syscalls.BPF_F_ALLOW_MULTI
            )
        finally:
            os.close(dir_fd)
    finally:
        os.close(prog_fd)
