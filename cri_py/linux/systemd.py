"""The systemd edge: the few calls of systemd's D-Bus API (org.freedesktop.systemd1.Manager)
the systemd cgroup driver makes, over the system bus, with jeepney.

The system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else /run/dbus/system_bus_socket) rather than
systemd's private socket (/run/systemd/private): the bus is systemd's documented API, the one
kubelet's and runc's systemd drivers use on the same node, while the private socket is
systemctl's internal channel and speaks no bus protocol (no Hello, no match rules). jeepney:
pure Python, no dependencies, a few hundred kB (dbus-fast is compiled and several times
bigger), importable from the daemon and, were it ever needed there, the shim (which starts
with `python -S` and no compiled extras). Calls are serialised on one connection; a job
(StartTransientUnit, StopUnit) is waited for until its JobRemoved signal says how it ended.
Which properties a unit gets is decided in `cri_py.oci.systemd`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jeepney import DBusAddress, MatchRule, Message, MessageType, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import HeaderFields

from cri_py.oci.systemd import Property

_MANAGER = DBusAddress(
    "/org/freedesktop/systemd1",
    bus_name="org.freedesktop.systemd1",
    interface="org.freedesktop.systemd1.Manager",
)
_PROPERTIES = "org.freedesktop.DBus.Properties"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
# How long a job may take (systemd's own default for a unit start is 90 s; these are
# cgroup operations that take milliseconds, so a hang is a broken systemd).
JOB_TIMEOUT = 30.0
CALL_TIMEOUT = 10.0


class SystemdError(Exception):
    """A D-Bus error reply (`name` is its error name), a failed job or no answer."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


def systemd_is_init() -> bool:
    """sd_booted(): PID 1 is systemd (it made /run/systemd/system)."""
    try:
        return (
            Path("/run/systemd/system").is_dir()
            and Path("/proc/1/comm").read_text().strip() == "systemd"
        )
    except OSError:
        return False


class SystemdClient:
    """One system-bus connection to systemd, opened on first use and again after a failure."""

    def __init__(self, bus: str = "SYSTEM") -> None:
        self._bus = bus
        self._lock = threading.Lock()
        self._conn: DBusConnection | None = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> DBusConnection:
        if self._conn is None:
            conn = open_dbus_connection(bus=self._bus)
            try:
                # The bus routes systemd's signals to us only after a match; systemd emits
                # JobRemoved only to subscribed clients.
                rule = MatchRule(
                    type="signal",
                    sender="org.freedesktop.systemd1",
                    interface="org.freedesktop.systemd1.Manager",
                    member="JobRemoved",
                )
                _check(conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=CALL_TIMEOUT))
                _check(
                    conn.send_and_get_reply(
                        new_method_call(_MANAGER, "Subscribe"), timeout=CALL_TIMEOUT
                    )
                )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _call(self, method: str, signature: str | None = None, body: tuple[Any, ...] = ()) -> Any:
        """A Manager method's reply body; one reconnect if the connection broke."""
        with self._lock:
            return self._call_locked(_MANAGER, method, signature, body)

    def _call_locked(
        self, address: DBusAddress, method: str, signature: str | None, body: tuple[Any, ...]
    ) -> Any:
        for attempt in (1, 2):
            try:
                conn = self._connection()
                reply = conn.send_and_get_reply(
                    new_method_call(address, method, signature, body), timeout=CALL_TIMEOUT
                )
                return _check(reply)
            except (OSError, EOFError, ValueError) as e:
                self._drop()
                if attempt == 2:
                    raise SystemdError(f"systemd {method}: {e}") from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    def _job(self, method: str, signature: str, body: tuple[Any, ...], unit: str) -> None:
        """Runs a method that queues a job and waits for the job's end; anything but "done"
        (failed, timeout, canceled, dependency...) is an error naming the unit."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    rule = MatchRule(type="signal", member="JobRemoved")
                    # The filter is in place before the call: the signal may overtake the reply.
                    with conn.filter(rule, queue=deque()) as removed:
                        reply = conn.send_and_get_reply(
                            new_method_call(_MANAGER, method, signature, body),
                            timeout=CALL_TIMEOUT,
                        )
                        (job,) = _check(reply)
                        result = _wait_job(conn, removed, job, JOB_TIMEOUT)
                    break
                except (OSError, EOFError, ValueError) as e:
                    self._drop()
                    if attempt == 2:
                        raise SystemdError(f"systemd {method} {unit}: {e}") from None
            if result != "done":
                raise SystemdError(f"systemd {method} {unit}: the job ended {result!r}")

    # --- the calls --------------------------------------------------------------------------

    def version(self) -> int:
        """systemd's version number (252 for "252.39-1~deb12u1")."""
        with self._lock:
            manager = DBusAddress(_MANAGER.object_path, _MANAGER.bus_name, _PROPERTIES)
            (value,) = self._call_locked(
                manager, "Get", "ss", ("org.freedesktop.systemd1.Manager", "Version")
            )
        text = str(value[1])
        digits = ""
        for char in text.lstrip("v"):
            if not char.isdigit():
                break
            digits += char
        return int(digits or 0)

    def start_transient_unit(self, name: str, properties: Sequence[Property]) -> None:
        self._job(
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            (name, "fail", [p.as_dbus() for p in properties], []),
            name,
        )

    def stop_unit(self, name: str) -> bool:
        """Stops a unit and waits for it; False when no such unit is loaded."""
        try:
            self._job("StopUnit", "ss", (name, "replace"), name)
        except SystemdError as e:
            if e.name == NO_SUCH_UNIT:
                return False
            raise
        return True

    def reset_failed_unit(self, name: str) -> None:
        """Forgets a failed unit (so its name can be used again); errors are ignored."""
        with contextlib.suppress(SystemdError):
            self._call("ResetFailedUnit", "s", (name,))

    def set_unit_properties(self, name: str, properties: Sequence[Property]) -> None:
        """Runtime properties (gone at reboot, as the transient unit itself)."""
        self._call("SetUnitProperties", "sba(sv)", (name, True, [p.as_dbus() for p in properties]))

    def attach_processes(self, name: str, pids: Sequence[int]) -> None:
        """Moves processes into a running unit's cgroup (systemd 238 and later)."""
        self._call("AttachProcessesToUnit", "ssau", (name, "", list(pids)))

    def unit_property(self, name: str, interface: str, prop: str) -> Any:
        """A property of a loaded unit; SystemdError NoSuchUnit when it is not loaded."""
        with self._lock:
            (path,) = self._call_locked(_MANAGER, "GetUnit", "s", (name,))
            unit = DBusAddress(path, _MANAGER.bus_name, _PROPERTIES)
            (value,) = self._call_locked(unit, "Get", "ss", (interface, prop))
        return value[1]

    def active_state(self, name: str) -> str:
        """ "active", "failed"... of a loaded unit, "" when none is loaded."""
        try:
            return str(self.unit_property(name, "org.freedesktop.systemd1.Unit", "ActiveState"))
        except SystemdError as e:
            if e.name == NO_SUCH_UNIT:
                return ""
            raise

    def list_units(self, patterns: Sequence[str]) -> list[tuple[str, str]]:
        """(name, active state) of the loaded units matching the glob patterns."""
        (units,) = self._call("ListUnitsByPatterns", "asas", ([], list(patterns)))
        return [(str(u[0]), str(u[3])) for u in units]

    def list_unit_descriptions(self, patterns: Sequence[str]) -> list[tuple[str, str]]:
        """(name, description) of the loaded units matching the glob patterns."""
        (units,) = self._call("ListUnitsByPatterns", "asas", ([], list(patterns)))
        return [(str(u[0]), str(u[1])) for u in units]


def _check(reply: Message) -> Any:
    if reply.header.message_type == MessageType.error:
        name = str(reply.header.fields.get(HeaderFields.error_name, ""))
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else name
        raise SystemdError(f"systemd: {text}", name)
    return reply.body


def _wait_job(conn: DBusConnection, removed: deque[Message], job: str, timeout: float) -> str:
    """The result of JobRemoved(id, job, unit, result) for `job`."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SystemdError(f"systemd job {job} did not finish in {timeout:.0f} s")
        try:
            signal = conn.recv_until_filtered(removed, timeout=remaining)
        except TimeoutError:
            continue
        if signal.body[1] == job:
            return str(signal.body[3])
