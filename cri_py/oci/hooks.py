"""A spec's OCI hooks (runtime-spec config.md, "POSIX-platform Hooks") as typed values: which
hooks run at which point of a container's life, the state JSON each one reads on stdin, and the
time each may take. Pure and stdlib only (the shim imports it); `cri_py.shim.hooks` runs them.

Where cri-py runs each kind (the spec's points, as runc sequences them):
  prestart, createRuntime  the shim, in the runtime's namespaces, once the container's
                           namespaces and mounts exist and before pivot_root (status creating)
  createContainer          the launcher, in the container's namespaces before pivot_root; its
                           path resolves in the runtime's filesystem view (status creating)
  startContainer           the launcher, in the container after StartContainer and before the
                           user's program; its path resolves in the container (status created)
  poststart                the shim, in the runtime's namespaces, once the program runs
  poststop                 the daemon, when the container is removed (status stopped)
A failing hook of the first four kinds fails the create or start (the container is
destroyed); poststart and poststop failures are logged and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OCI_VERSION = "1.2.0"
# In the order the spec (and runc) runs them, with their config.json keys.
HOOK_KINDS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
# A hook without a timeout gets this many seconds: the spec sets no limit, but a hook that
# never ends must not hold a pod's shim (which serves every container of the pod) forever.
DEFAULT_TIMEOUT_SECONDS = 10
# Beyond what a create or start call can wait for.
MAX_TIMEOUT_SECONDS = 300


class HookError(ValueError):
    """A spec's hooks section is malformed; the message names the hook."""


@dataclass(frozen=True)
class Hook:
    path: str
    # argv, argv[0] included (execv's semantics); empty: just the path.
    args: tuple[str, ...] = ()
    # The hook's whole environment: it inherits nothing of the runtime's.
    env: tuple[str, ...] = ()
    timeout: int | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        return self.args or (self.path,)

    @property
    def seconds(self) -> float:
        return float(self.timeout if self.timeout is not None else DEFAULT_TIMEOUT_SECONDS)

    def describe(self) -> str:
        """The path and its first arguments, for messages."""
        args = self.argv[1:]
        return " ".join((self.path, *args[:3])) + (" ..." if len(args) > 3 else "")

    def to_spec(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": self.path}
        if self.args:
            entry["args"] = list(self.args)
        if self.env:
            entry["env"] = list(self.env)
        if self.timeout is not None:
            entry["timeout"] = self.timeout
        return entry


@dataclass(frozen=True)
class Hooks:
    prestart: tuple[Hook, ...] = ()
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()

    @property
    def runtime_create(self) -> tuple[Hook, ...]:
        """What the shim runs while the init waits before pivot_root, in order."""
        return self.prestart + self.create_runtime

    @property
    def pause_before_pivot(self) -> bool:
        """The init stops before pivot_root: hooks of the create operation exist."""
        return bool(self.runtime_create or self.create_container)

    def __bool__(self) -> bool:
        return any(getattr(self, _FIELDS[kind]) for kind in HOOK_KINDS)


_FIELDS = {
    "prestart": "prestart",
    "createRuntime": "create_runtime",
    "createContainer": "create_container",
    "startContainer": "start_container",
    "poststart": "poststart",
    "poststop": "poststop",
}


def budget(hooks: Sequence[Hook]) -> float:
    """The longest these hooks may take, one after the other: what a caller waits on top."""
    return sum(h.seconds for h in hooks)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HookError(f"{where} must be a list of strings")
    return tuple(value)


def hook_from_spec(data: Any, where: str) -> Hook:
    if not isinstance(data, Mapping):
        raise HookError(f"{where} must be an object")
    path = data.get("path")
    if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/"):
        raise HookError(f"{where}.path {path!r} must be an absolute path without '..'")
    env = _strings(data.get("env"), f"{where}.env")
    for entry in env:
        if "=" not in entry or entry.startswith("=") or "\0" in entry:
            raise HookError(f"{where}.env entry {entry!r} is not NAME=value")
    args = _strings(data.get("args"), f"{where}.args")
    if any("\0" in a for a in (path, *args)):
        raise HookError(f"{where}: a NUL byte in the path or args")
    timeout = data.get("timeout")
    if timeout is not None:
        # bool is an int to Python, not to JSON.
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
            raise HookError(f"{where}.timeout must be a positive number of seconds")
        if timeout > MAX_TIMEOUT_SECONDS:
            raise HookError(f"{where}.timeout {timeout}s is above cri-py's {MAX_TIMEOUT_SECONDS}s")
    return Hook(path=path, args=args, env=env, timeout=timeout)


def hooks_from_spec(spec: Mapping[str, Any]) -> Hooks:
    """The `hooks` section of an OCI spec, checked; unknown kinds are refused (a hook the
    runtime would silently skip is a hook the operator relies on in vain)."""
    section = spec.get("hooks") or {}
    if not isinstance(section, Mapping):
        raise HookError("hooks must be an object")
    unknown = sorted(set(section) - set(HOOK_KINDS))
    if unknown:
        raise HookError(f"unknown hook kinds {unknown}")
    values: dict[str, tuple[Hook, ...]] = {}
    for kind in HOOK_KINDS:
        entries = section.get(kind) or []
        if not isinstance(entries, list):
            raise HookError(f"hooks.{kind} must be a list")
        values[_FIELDS[kind]] = tuple(
            hook_from_spec(entry, f"hooks.{kind}[{i}]") for i, entry in enumerate(entries)
        )
    return Hooks(**values)


def append_hooks(spec: dict[str, Any], kind: str, hooks: Sequence[Hook]) -> None:
    """Appends `hooks` to the spec's `kind` list (NRI and CDI add after what is there)."""
    if kind not in HOOK_KINDS:
        raise HookError(f"unknown hook kind {kind!r}")
    if hooks:
        section = spec.setdefault("hooks", {})
        section.setdefault(kind, []).extend(h.to_spec() for h in hooks)


def state(
    container_id: str,
    status: str,
    pid: int,
    bundle: str,
    annotations: Mapping[str, str],
) -> bytes:
    """The container's state as the runtime spec's runtime.md defines it: what a hook reads on
    its stdin. `pid` is the init's in the runtime's PID namespace (0: none, when stopped)."""
    data: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "id": container_id,
        "status": status,
        "bundle": bundle,
    }
    if pid > 0:
        data["pid"] = pid
    if annotations:
        data["annotations"] = dict(annotations)
    return json.dumps(data, sort_keys=True).encode()
