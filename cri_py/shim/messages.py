"""The typed messages of the daemon <-> shim protocol: one frozen dataclass per request, reply
and event, and the only code that turns them into the JSON objects `protocol` frames, and back.

Both sides use these classes: the shim's dispatcher (`cri_py.shim.main`) decodes a request with
`decode_request`, its handlers return a reply; `ShimClient` (`cri_py.shim.client`) encodes the
request and decodes the reply it expects. The JSON keys are those of protocol version 1 (the
shims of earlier releases speak it): see `cri_py.shim.protocol` for what a version means.
A message that is not what its method needs is refused with `ProtocolError` (the shim answers
it with an "invalid" error). Imported by the shim: stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import signal
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from cri_py.shim.protocol import ProtocolError

_MISSING: Any = object()


def _field(data: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    if value is _MISSING:
        raise ProtocolError(f"field {key!r} is missing")
    if value is default and default is not _MISSING:
        return value
    # bool is an int to Python, never to this protocol.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"field {key!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _str(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> str:
    return str(_field(data, key, str, default))


def _int(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> int:
    return int(_field(data, key, int, default))


def _bool(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> bool:
    return bool(_field(data, key, bool, default))


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    value = _field(data, key, int, None)
    return None if value is None else int(value)


def _number(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be a number")
    return float(value)


def _list(data: Mapping[str, Any], key: str, item: type) -> tuple[Any, ...]:
    values = _field(data, key, list, ())
    for value in values:
        if not isinstance(value, item) or isinstance(value, bool):
            raise ProtocolError(f"field {key!r} must hold {item.__name__} values")
    return tuple(values)


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = _field(data, key, dict, None)
    return None if value is None else dict(value)


# --- values inside replies and events -----------------------------------------------------


@dataclass(frozen=True)
class ExitInfo:
    """How a container's process ended, as the shim recorded it (also its `exit.json`)."""

    exit_code: int
    finished_at: int
    reason: str
    message: str = ""
    started_at: int = 0
    pid: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "finished_at": self.finished_at,
            "reason": self.reason,
            "message": self.message,
            "started_at": self.started_at,
            "pid": self.pid,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            _int(data, "exit_code"),
            _int(data, "finished_at"),
            _str(data, "reason"),
            _str(data, "message", ""),
            _int(data, "started_at", 0),
            _int(data, "pid", 0),
        )


@dataclass(frozen=True)
class ProcessUser:
    """The user a container's init runs as, after the image's /etc/passwd was read."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "groups": list(self.groups)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(_int(data, "uid"), _int(data, "gid"), _list(data, "groups", int))


@dataclass(frozen=True)
class ContainerView:
    """A container as its shim sees it: the reply to create, start and container-status."""

    id: str
    pid: int
    status: str  # "created", "running" or "exited"
    created_at: int = 0
    started_at: int = 0
    exit: ExitInfo | None = None
    user: ProcessUser | None = None
    # Only in create's reply, when one was asked for: the value applied (maybe clamped).
    oom_score_adj: int | None = None

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "pid": self.pid,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "exit": None if self.exit is None else self.exit.to_wire(),
            "user": None if self.user is None else self.user.to_wire(),
        }
        if self.oom_score_adj is not None:
            data["oom_score_adj"] = self.oom_score_adj
        return data

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        exit, user = _object(data, "exit"), _object(data, "user")
        return cls(
            _str(data, "id"),
            _int(data, "pid", 0),
            _str(data, "status"),
            _int(data, "created_at", 0),
            _int(data, "started_at", 0),
            None if exit is None else ExitInfo.from_wire(exit),
            None if user is None else ProcessUser.from_wire(user),
            _optional_int(data, "oom_score_adj"),
        )


def _views(data: Mapping[str, Any]) -> tuple[ContainerView, ...]:
    return tuple(ContainerView.from_wire(c) for c in _list(data, "containers", dict))


# --- replies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """The reply of a request that answers nothing but success (kill, remove, ...)."""

    def to_wire(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls()


@dataclass(frozen=True)
class ShimStatus:
    """The reply to ping and status. `protocol` is absent from a version 1 shim's reply."""

    sandbox_id: str
    pid: int
    init_pid: int
    init_exit: int | None
    started_at: int
    containers: tuple[ContainerView, ...]
    protocol: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "sandbox_id": self.sandbox_id,
            "pid": self.pid,
            "init_pid": self.init_pid,
            "init_exit": self.init_exit,
            "started_at": self.started_at,
            "containers": [c.to_wire() for c in self.containers],
            "protocol": self.protocol,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            _str(data, "sandbox_id"),
            _int(data, "pid"),
            _int(data, "init_pid", 0),
            _optional_int(data, "init_exit"),
            _int(data, "started_at", 0),
            _views(data),
            _int(data, "protocol", 1),
        )


@dataclass(frozen=True)
class Subscribed:
    """The reply to subscribe: the containers the shim holds (recovery reads them)."""

    containers: tuple[ContainerView, ...]
    protocol: int

    def to_wire(self) -> dict[str, Any]:
        return {"containers": [c.to_wire() for c in self.containers], "protocol": self.protocol}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(_views(data), _int(data, "protocol", 1))


@dataclass(frozen=True)
class Attached:
    """The reply to attach: whether a dup of the container's stdin rides with it."""

    stdin: bool

    def to_wire(self) -> dict[str, Any]:
        return {"stdin": self.stdin}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(_bool(data, "stdin", False))


@dataclass(frozen=True)
class ExecResult:
    """The reply to exec (with the collected output) and exec-stream (output empty)."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""

    def to_wire(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "stdout": base64.b64encode(self.stdout).decode(),
            "stderr": base64.b64encode(self.stderr).decode(),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        try:
            stdout = base64.b64decode(_str(data, "stdout", ""), validate=True)
            stderr = base64.b64decode(_str(data, "stderr", ""), validate=True)
        except binascii.Error as e:
            raise ProtocolError(f"exec output is not base64: {e}") from None
        return cls(_int(data, "exit_code"), stdout, stderr)


Reply = Done | ShimStatus | Subscribed | ContainerView | Attached | ExecResult


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exited:
    """Pushed to subscribers when a container's process ends (its exit is recorded first)."""

    NAME: ClassVar[str] = "exited"
    id: str
    exit: ExitInfo

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, **self.exit.to_wire()}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(_str(data, "id"), ExitInfo.from_wire(data))


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _NoParams:
    METHOD: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls()


@dataclass(frozen=True)
class Ping(_NoParams):
    METHOD: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Status(_NoParams):
    METHOD: ClassVar[str] = "status"


@dataclass(frozen=True)
class Shutdown(_NoParams):
    """Kill every container, record their exits, remove the socket and exit."""

    METHOD: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class Subscribe(_NoParams):
    """From now on this connection also carries events."""

    METHOD: ClassVar[str] = "subscribe"


@dataclass(frozen=True)
class _ById:
    """A request about one container, named by `id`."""

    METHOD: ClassVar[str] = ""
    id: str

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(_str(data, "id"))


@dataclass(frozen=True)
class Start(_ById):
    METHOD: ClassVar[str] = "start"


@dataclass(frozen=True)
class ContainerStatus(_ById):
    METHOD: ClassVar[str] = "container-status"


@dataclass(frozen=True)
class Wait(_ById):
    """Version 1's other name for container-status (it never waited)."""

    METHOD: ClassVar[str] = "wait"


@dataclass(frozen=True)
class CloseStdin(_ById):
    METHOD: ClassVar[str] = "close-stdin"


@dataclass(frozen=True)
class ReopenLog(_ById):
    METHOD: ClassVar[str] = "reopen-log"


@dataclass(frozen=True)
class Remove(_ById):
    METHOD: ClassVar[str] = "remove"


@dataclass(frozen=True)
class Kill:
    METHOD: ClassVar[str] = "kill"
    id: str
    signal: int = int(signal.SIGKILL)

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "signal": self.signal}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(_str(data, "id"), _int(data, "signal", int(signal.SIGKILL)))


@dataclass(frozen=True)
class Create:
    """Launch a container's init up to execve; `bundle` holds its `config.json`."""

    METHOD: ClassVar[str] = "create"
    id: str
    bundle: str
    # OCI mount objects, the first of which becomes the rootfs (an overlay).
    rootfs: tuple[Mapping[str, Any], ...]
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    oom_score_adj: int | None = None
    # Joined by the init itself before it touches the image (one per cgroup hierarchy).
    cgroup_procs: tuple[str, ...] = ()
    oom_file: str = ""
    # (name, source) of the cgroup filesystems mounted at /sys/fs/cgroup in the container.
    cgroup_mounts: tuple[tuple[str, str], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bundle": self.bundle,
            "rootfs": [dict(m) for m in self.rootfs],
            "log_path": self.log_path,
            "stdin": self.stdin,
            "stdin_once": self.stdin_once,
            "oom_score_adj": self.oom_score_adj,
            "cgroup_procs": list(self.cgroup_procs),
            "oom_file": self.oom_file,
            "cgroup_mounts": [list(m) for m in self.cgroup_mounts],
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        mounts = []
        for pair in _list(data, "cgroup_mounts", list):
            if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
                raise ProtocolError("field 'cgroup_mounts' must hold [name, source] pairs")
            mounts.append((str(pair[0]), str(pair[1])))
        rootfs = tuple(dict(m) for m in _list(data, "rootfs", dict))
        if not rootfs:
            raise ProtocolError("field 'rootfs' must name at least one mount")
        return cls(
            _str(data, "id"),
            _str(data, "bundle"),
            rootfs,
            _str(data, "log_path", ""),
            _bool(data, "stdin", False),
            _bool(data, "stdin_once", False),
            _optional_int(data, "oom_score_adj"),
            _list(data, "cgroup_procs", str),
            _str(data, "oom_file", ""),
            tuple(mounts),
        )


@dataclass(frozen=True)
class Attach:
    """Copy the container's `streams` into the pipes passed with the request (SCM_RIGHTS)."""

    METHOD: ClassVar[str] = "attach"
    id: str
    streams: tuple[str, ...]
    stdin: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "streams": list(self.streams), "stdin": self.stdin}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(_str(data, "id"), _list(data, "streams", str), _bool(data, "stdin", False))


@dataclass(frozen=True)
class Exec:
    """Run `args` in the container, output collected into the reply (ExecSync). `timeout` in
    seconds, 0 for none: the shim kills the command and answers a "timeout" error."""

    METHOD: ClassVar[str] = "exec"
    id: str
    args: tuple[str, ...]
    timeout: float = 0.0
    tty: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "args": list(self.args), "timeout": self.timeout, "tty": self.tty}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            _str(data, "id"),
            _list(data, "args", str),
            _number(data, "timeout", 0.0),
            _bool(data, "tty", False),
        )


@dataclass(frozen=True)
class ExecStream:
    """Run `args` in the container on the three fds passed with the request; the reply, when
    the command exits, carries its exit code."""

    METHOD: ClassVar[str] = "exec-stream"
    id: str
    args: tuple[str, ...]
    tty: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "args": list(self.args), "tty": self.tty}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Self:
        return cls(_str(data, "id"), _list(data, "args", str), _bool(data, "tty", False))


ShimRequest = (
    Ping
    | Status
    | Shutdown
    | Subscribe
    | Create
    | Start
    | Kill
    | ContainerStatus
    | Wait
    | Attach
    | CloseStdin
    | ReopenLog
    | Remove
    | Exec
    | ExecStream
)

REQUESTS: Mapping[str, type[ShimRequest]] = {
    kind.METHOD: kind for kind in typing.get_args(ShimRequest)
}


def decode_request(method: str, params: Mapping[str, Any]) -> ShimRequest:
    """The typed request; ProtocolError for an unknown method or params it does not take."""
    kind = REQUESTS.get(method)
    if kind is None:
        raise ProtocolError(f"unknown method {method!r}")
    try:
        return kind.from_wire(params)
    except ProtocolError as e:
        raise ProtocolError(f"{method}: {e}") from None
