#!/usr/bin/python3
"""runc for the lab's Docker on a machine whose capability bounding set is short.

Why: this machine's bounding set lacks CAP_SYS_RESOURCE (CapBnd 000001fffeffffff), so no process
on it can hold that capability. `docker run --privileged` (every kind node) asks runc for every
capability Docker knows, and runc fails with "unable to apply caps: operation not permitted"
when it tries to keep one the kernel will not grant.

What: e2e/docker.sh installs this file as dockerd's default runtime (daemon.json `runtimes` and
`default-runtime`). For `runc create` and `runc run` it reads the bundle's config.json and, for
`runc exec --process FILE` (`docker exec`), that process file; it removes from every capability
set (bounding, effective, inheritable, permitted, ambient) each capability the wrapper's own
bounding set lacks (CapBnd in /proc/self/status: the wrapper runs with the bounding set runc
would), rewrites the file only when something was removed, appends one line per rewrite to
runc-wrapper.log next to this file, and execs the real runc with the same arguments. Nothing
else in the spec changes, and capabilities the machine has are never added or removed.
Capability names this file does not know are left as they are (runc judges them).

Environment: CRI_PY_REAL_RUNC (default /usr/sbin/runc), the runc to exec.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REAL_RUNC = os.environ.get("CRI_PY_REAL_RUNC", "/usr/sbin/runc")

# Linux capability numbers (include/uapi/linux/capability.h), 0..40.
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

# runc's global options that take a value (runc 1.1 `runc --help`); the rest are booleans.
_GLOBAL_WITH_VALUE = frozenset({"--root", "--log", "--log-format", "--criu", "--rootless"})


def missing_capabilities(capbnd_mask: int) -> frozenset[str]:
    """The known capabilities whose bit is clear in a CapBnd mask."""
    return frozenset(name for bit, name in enumerate(CAPABILITIES) if not capbnd_mask >> bit & 1)


def read_capbnd(status_text: str) -> int:
    """The CapBnd mask of a /proc/<pid>/status text."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapBnd":
            return int(value.strip(), 16)
    raise ValueError("no CapBnd line in the status text")


def restrict_capabilities(
    capabilities: Mapping[str, Any], missing: Iterable[str]
) -> tuple[dict[str, Any], list[str]]:
    """A copy of an OCI `capabilities` object without the `missing` names in any set.

    Returns the new object and the sorted names it removed (empty: the copy equals the input).
    Keys other than the five sets, and sets that are not lists, are copied unchanged.
    """
    drop = frozenset(missing)
    result = dict(capabilities)
    removed: set[str] = set()
    for key in CAPABILITY_SETS:
        names = capabilities.get(key)
        if not isinstance(names, list):
            continue
        kept = [name for name in names if name not in drop]
        removed.update(name for name in names if name in drop)
        result[key] = kept
    return result, sorted(removed)


def restrict_process(
    process: Mapping[str, Any], missing: Iterable[str]
) -> tuple[dict[str, Any], list[str]]:
    """An OCI `process` object (as in config.json or `runc exec --process`) without `missing`."""
    result = dict(process)
    capabilities = process.get("capabilities")
    if not isinstance(capabilities, Mapping):
        return result, []
    result["capabilities"], removed = restrict_capabilities(capabilities, missing)
    return result, removed


def restrict_spec(
    spec: Mapping[str, Any], missing: Iterable[str]
) -> tuple[dict[str, Any], list[str]]:
    """An OCI runtime spec (config.json) whose process holds none of the `missing` capabilities."""
    result = dict(spec)
    process = spec.get("process")
    if not isinstance(process, Mapping):
        return result, []
    result["process"], removed = restrict_process(process, missing)
    return result, removed


def command_and_options(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """runc's subcommand and the arguments after it, from its argv without argv[0]."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return None, []
        if not arg.startswith("-"):
            return arg, list(argv[i + 1 :])
        name = arg.split("=", 1)[0]
        i += 2 if name in _GLOBAL_WITH_VALUE and "=" not in arg else 1
    return None, []


def _option(args: Sequence[str], *names: str) -> str | None:
    """The value of the first option among `names` (`--x v`, `--x=v`, `-x v`) in `args`."""
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "=") and name.startswith("--"):
                return arg[len(name) + 1 :]
    return None


def file_to_restrict(argv: Sequence[str], cwd: str) -> tuple[str, str] | None:
    """("spec" | "process", path) of the JSON file a runc call reads capabilities from, if any."""
    command, args = command_and_options(argv)
    if command in ("create", "run"):
        bundle = _option(args, "--bundle", "-b") or cwd
        return "spec", os.path.join(cwd, bundle, "config.json")
    if command == "exec":
        process = _option(args, "--process", "-p")
        if process is not None:
            return "process", os.path.join(cwd, process)
    return None


def _rewrite(kind: str, path: Path, missing: frozenset[str]) -> list[str]:
    document = json.loads(path.read_bytes())
    if not isinstance(document, dict):
        return []
    restrict = restrict_spec if kind == "spec" else restrict_process
    new, removed = restrict(document, missing)
    if removed:
        tmp = path.with_name(path.name + ".cri-py-tmp")
        tmp.write_text(json.dumps(new))
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        tmp.replace(path)
    return removed


def _log(message: str) -> None:
    try:
        log = Path(__file__).resolve().with_suffix(".log")
        with log.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}\n")
    except OSError:
        pass


def main(argv: Sequence[str]) -> None:
    target = file_to_restrict(argv[1:], os.getcwd())
    if target is not None:
        kind, path = target
        missing = missing_capabilities(read_capbnd(Path("/proc/self/status").read_text()))
        try:
            removed = _rewrite(kind, Path(path), missing) if missing else []
        except (OSError, ValueError) as err:
            # runc itself reports a missing or broken file; the wrapper only says what it saw.
            _log(f"{kind} {path}: not rewritten: {err}")
        else:
            if removed:
                _log(f"{kind} {path}: dropped {' '.join(removed)}")
    os.execv(REAL_RUNC, [REAL_RUNC, *argv[1:]])


if __name__ == "__main__":
    main(sys.argv)
