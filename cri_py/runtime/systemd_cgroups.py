"""The systemd cgroup driver: pods are slices, containers transient scopes, made and changed
through systemd's D-Bus API, because systemd owns the cgroup tree on such a node and undoes
what others write behind its back.

A container's cgroup is `<its pod's slice path>/cri-py-<id>.scope` (`Delegate=yes`): kubelet
sends the pod slice's name as `cgroup_parent` (`kubepods-burstable-pod<uid>.slice`); a pod
without one gets `cri-py-pod_<id>.slice` under `cgroups.default_slice`, made here as a transient
slice with the pod's limits and stopped with the pod. kubelet makes its pod slices before
RunPodSandbox, and cri-py never touches them; a named slice systemd does not have (critest's,
crictl's) is made here as a transient slice with the first pod's limits, recorded by the pods
that use it, and stopped by the last of them to go (`make_parent`, `release_parent`).

A scope cannot start without a process and ends (its cgroup removed) as soon as it is empty,
while a container's init joins its cgroup itself (writing cgroup.procs before it touches the
image) and the shim reads the OOM kill counter in that cgroup after the init has died. So
each scope starts with a holder, `sleep infinity` named `cri-py-scope-holder`, that stays
until RemoveContainer, as the cgroup does with the cgroupfs driver: the init joins a scope
that exists, the shim needs no D-Bus, and an OOM-killed container's counter is still there
when its exit is read (systemd would otherwise race the shim to remove the cgroup). It costs
the container one task and some hundred kB of its memory. Limits go to systemd as unit
properties (`cri_py.oci.systemd`) and then into the files, exactly as the cgroupfs driver
writes them (`CgroupManager`): the files hold the exact values and what systemd has no
property for, the properties make systemd keep them.
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cri_py.errors import CriError, Internal, InvalidArgument
from cri_py.linux.cgroupfs import MOUNTINFO, Cgroupfs, CgroupMode, parse_mountinfo
from cri_py.linux.systemd import NO_SUCH_UNIT, UNIT_EXISTS, SystemdClient, SystemdError
from cri_py.log import get_logger
from cri_py.oci.cgroups import v2_controllers
from cri_py.oci.systemd import (
    PARENT_SLICE_DESCRIPTION,
    SHIM_SCOPE,
    Property,
    accounting_properties,
    device_properties,
    expand_slice,
    is_ours,
    parse_proc_devices,
    pod_slice_name,
    resource_properties,
    scope_name,
    scope_properties,
    slice_name,
    slice_properties,
    unit_of,
)
from cri_py.runtime.cgroups import CgroupManager

log = get_logger("cri_py.cgroups")

# The holder of a container's scope (see the module docstring): coreutils' sleep, the smallest
# program every node has; a site-less Python that waits for a signal where there is none.
HOLDER_NAME = "cri-py-scope-holder"


_ACTIVE = ("active", "activating", "reloading")


def _holder_command() -> tuple[str, list[str]]:
    sleep = shutil.which("sleep")
    if sleep:
        return sleep, [HOLDER_NAME, "infinity"]
    return sys.executable, [HOLDER_NAME, "-S", "-c", "import signal; signal.pause()"]


def own_slice(proc_cgroup: str) -> str:
    """The slice the daemon's unit is in, from a /proc/self/cgroup text (the systemd
    hierarchy's line on v1, the unified one on v2); system.slice when it is in none."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("", "name=systemd"):
            slices = [p for p in path.split("/") if p.endswith(".slice")]
            if slices:
                return slices[-1]
    return "system.slice"


class SystemdCgroupManager(CgroupManager):
    """`CgroupManager` whose cgroups are systemd units (see the module's docstring)."""

    driver = "systemd"

    def __init__(
        self,
        fs: Cgroupfs,
        client: SystemdClient,
        pids_limit: int = 0,
        default_slice: str = "cri-py.slice",
    ) -> None:
        super().__init__(fs, pids_limit)
        self.client = client
        self.default_slice = default_slice
        self.version = client.version()
        self._holders: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        # The parent slices cri-py made (`make_parent`) -> the sandboxes that use them; the
        # lock makes "make or join" and "last one out" one step each.
        self._made: dict[str, set[str]] = {}
        self._parents_lock = threading.Lock()
        # Hybrid nodes: systemd tracks a unit's processes in the (controller-less) cgroup2
        # mount too, and a scope whose cgroup there is empty is over. The init joins it there.
        self._unified: Path | None = None
        if fs.mode == CgroupMode.HYBRID:
            mounts = parse_mountinfo(MOUNTINFO.read_text())
            unified = [h for h in mounts if h.version == 2]
            if unified:
                self._unified = Path(unified[0].mountpoint)

    @property
    def _v2(self) -> bool:
        return self.fs.mode == CgroupMode.V2

    @functools.cached_property
    def _device_names(self) -> dict[tuple[str, int], str]:
        try:
            return parse_proc_devices(Path("/proc/devices").read_text())
        except OSError:
            return {}

    # --- where cgroups live ---------------------------------------------------------------

    def container_cgroup(self, parent: str, container_id: str, default_parent: str) -> str:
        """`<parent slice path>/cri-py-<id>.scope`; `default_parent` (a cgroupfs path) is
        not used: pods without a parent have a slice of their own."""
        name = slice_name(parent) if parent else self.default_slice
        return f"{expand_slice(name).rstrip('/')}/{scope_name(container_id)}"

    def pod_cgroup(self, default_parent: str, sandbox_id: str) -> str:
        return expand_slice(pod_slice_name(self.default_slice, sandbox_id))

    def check_parent(self, parent: str) -> None:
        slice_name(parent)

    # --- parents cri-py makes -------------------------------------------------------------

    def make_parent(self, parent: str, resources: Mapping[str, Any], owner: str) -> str:
        """The slice `parent` names, made as a transient slice with the pod's limits when
        systemd has none active (kubelet makes its pod slices first; critest and crictl name
        ones that may not exist). A slice cri-py made and still uses is shared: the pods that
        recorded it are its users, and the last one out stops it. A slice someone else made
        (kubelet's) is never touched: "" is returned."""
        name = slice_name(parent)
        if name == "-.slice" or is_ours(name):
            return ""
        try:
            return self._make_parent(name, resources, owner)
        except SystemdError as e:
            raise _cri_error(name, e) from None

    def _make_parent(self, name: str, resources: Mapping[str, Any], owner: str) -> str:
        with self._parents_lock:
            state = self.client.active_state(name)
            users = self._made.get(name)
            if state in _ACTIVE:
                if users is None:
                    return ""  # kubelet's, or anyone's but ours
                users.add(owner)
                return name
            if state:  # failed, or inactive and still loaded
                self.client.reset_failed_unit(name)
            cgroup = expand_slice(name)
            writes = self.plan(resources)
            properties = slice_properties(f"{PARENT_SLICE_DESCRIPTION} {name}")
            properties += self._properties(resources, name) + accounting_properties(self._v2)
            try:
                self.client.start_transient_unit(name, properties)
            except SystemdError as e:
                if e.name != UNIT_EXISTS:
                    raise _cri_error(name, e) from None
                # A unit file of that name, not started: systemd starts it with the first
                # container, as it is; not cri-py's to size or to stop.
                log.warning("pod parent slice has a unit file; not made by cri-py", unit=name)
                return ""
            self._fill(cgroup, name, resources, writes)
            self._made.setdefault(name, set()).add(owner)
            log.info("pod parent slice made", unit=name, sandbox=owner)
            return name

    def adopt_parent(self, made: str, owner: str) -> None:
        with self._parents_lock:
            self._made.setdefault(made, set()).add(owner)

    def release_parent(self, made: str, owner: str) -> None:
        """Stops the slice when `owner` was its last user and nothing else is in it (a unit
        another client started there keeps it, logged)."""
        with self._parents_lock:
            users = self._made.get(made)
            if users is None:
                return  # released already (a repeated RemovePodSandbox)
            users.discard(owner)
            if users:
                return
            del self._made[made]
            cgroup = expand_slice(made)
            # What systemd removes after a scope's stop job ended may still be listed a moment.
            deadline = time.monotonic() + 2.0
            while (children := self._children(cgroup)) and time.monotonic() < deadline:
                time.sleep(0.05)
            if children:
                log.warning(
                    "pod parent slice cri-py made still holds units; left",
                    unit=made,
                    children=",".join(sorted(children)),
                )
                return
            self._remove_unit(cgroup, made, time.monotonic() + 5.0)
            log.info("pod parent slice stopped", unit=made, sandbox=owner)

    def parent_cgroup(self, made: str) -> str:
        return expand_slice(made)

    def _children(self, cgroup: str) -> set[str]:
        """The cgroups below `cgroup` in any hierarchy (units in a slice, or their leftovers)."""
        found: set[str] = set()
        for directory in self.fs.dirs(cgroup):
            try:
                found.update(c.name for c in directory.iterdir() if c.is_dir())
            except FileNotFoundError:
                continue
        if self._unified is not None:
            with contextlib.suppress(FileNotFoundError):
                found.update(
                    c.name for c in (self._unified / cgroup.lstrip("/")).iterdir() if c.is_dir()
                )
        return found

    # --- units ----------------------------------------------------------------------------

    def _properties(self, resources: Mapping[str, Any], subject: str) -> list[Property]:
        properties = resource_properties(resources, self._v2, self.version)
        rules = resources.get("devices")
        if rules and not self._v2:
            # On v2 the BPF program cri-py attaches does it; systemd attaches none of its own
            # for a unit without device properties.
            devices = device_properties(rules, self._device_names)
            if devices is None:
                log.warning(
                    "device rules not expressible as systemd properties; a systemd reload "
                    "may widen them until the container restarts",
                    unit=subject,
                )
            else:
                properties += devices
        return properties

    def _start(self, unit: str, properties: list[Property]) -> None:
        try:
            self.client.start_transient_unit(unit, properties)
        except SystemdError as e:
            if e.name != UNIT_EXISTS:
                raise _cri_error(unit, e) from None
            # A leftover (a create the daemon died in, a failed unit): gone, then once more.
            log.warning("systemd unit already there; replacing it", unit=unit)
            self._stop(unit)
            try:
                self.client.start_transient_unit(unit, properties)
            except SystemdError as again:
                raise _cri_error(unit, again) from None

    def _stop(self, unit: str) -> None:
        try:
            self.client.stop_unit(unit)
        except SystemdError as e:
            log.error("cannot stop a systemd unit", unit=unit, error=str(e))
        self.client.reset_failed_unit(unit)

    def create(self, cgroup: str, resources: Mapping[str, Any]) -> None:
        """Starts the container's scope (or the pod's slice) with the limits as properties,
        then writes the files of the cgroupfs translation and the device rules. Nothing is
        left if it fails."""
        if not is_ours(cgroup):
            raise InvalidArgument(f"cgroup {cgroup} is not a cri-py systemd unit")
        unit = unit_of(cgroup)
        writes = self.plan(resources)
        limits = self._properties(resources, unit) + accounting_properties(self._v2)
        if unit.endswith(".scope"):
            parent = posixpath.basename(posixpath.dirname(cgroup)) or "-.slice"
            executable, args = _holder_command()
            holder = subprocess.Popen(
                args,
                executable=executable,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
            with self._lock:
                self._holders[cgroup] = holder
            properties = scope_properties(
                f"cri-py container {unit.removeprefix('cri-py-').removesuffix('.scope')}",
                parent,
                [holder.pid],
            )
        else:
            properties = slice_properties(f"cri-py pod {unit}")
        try:
            self._start(unit, properties + limits)
        except BaseException:
            self._end_holder(cgroup)
            raise
        self._fill(cgroup, unit, resources, writes)

    def _fill(
        self, cgroup: str, unit: str, resources: Mapping[str, Any], writes: list[Any]
    ) -> None:
        """After the unit started: its files, as the cgroupfs translation writes them; the
        unit stopped and its cgroup removed if that fails."""
        try:
            # v1: the hierarchies systemd does not manage (cpuset, freezer, hugetlb...) get
            # the unit's path too, as runc does; v2: controllers systemd does not know
            # (hugetlb) are enabled above the scope.
            self.fs.create(cgroup)
            self.fs.enable_v2_controllers(cgroup, v2_controllers(writes))
            self.fs.write(cgroup, writes)
            if "devices" in resources:
                self._allow_devices(cgroup, resources["devices"])
        except BaseException:
            self._remove_unit(cgroup, unit, time.monotonic() + 5.0)
            raise

    def procs_files(self, cgroup: str) -> list[str]:
        files = super().procs_files(cgroup)
        if self._unified is not None:
            files.append(str(self._unified / cgroup.lstrip("/") / "cgroup.procs"))
        return files

    def _end_holder(self, cgroup: str) -> None:
        """Kills and reaps the holder this daemon started for `cgroup` (one a previous daemon
        started is killed with the cgroup's other processes and reaped by init)."""
        with self._lock:
            holder = self._holders.pop(cgroup, None)
        if holder is None:
            return
        holder.kill()
        holder.wait()

    def update(self, cgroup: str, resources: Mapping[str, Any]) -> None:
        """New limits, all or nothing: the unit's properties first (their previous values
        read back), then the files (`CgroupManager.update`, undone file by file on a
        refusal); a refusal of either puts the previous properties back."""
        unit = unit_of(cgroup)
        interface = "org.freedesktop.systemd1." + ("Scope" if unit.endswith(".scope") else "Slice")
        properties = resource_properties(resources, self._v2, self.version)
        try:
            previous = [
                Property(p.name, p.signature, self.client.unit_property(unit, interface, p.name))
                for p in properties
            ]
        except SystemdError as e:
            if e.name == NO_SUCH_UNIT:
                raise FileNotFoundError(f"systemd unit {unit} is gone") from None
            raise _cri_error(unit, e) from None
        try:
            self.client.set_unit_properties(unit, properties)
        except SystemdError as e:
            raise _cri_error(unit, e) from None
        try:
            super().update(cgroup, resources)
        except BaseException:
            try:
                self.client.set_unit_properties(unit, previous)
            except SystemdError as e:
                log.error("could not restore unit properties", unit=unit, error=str(e))
            raise

    def remove(self, cgroup: str, timeout: float = 5.0) -> None:
        """Kills what is left in the unit's cgroup, stops the unit (a slice: with whatever
        is still under it) and removes the directories systemd does not own (v1)."""
        if not is_ours(cgroup):
            raise InvalidArgument(f"cgroup {cgroup} is not a cri-py systemd unit")
        self._remove_unit(cgroup, unit_of(cgroup), time.monotonic() + timeout)

    def _remove_unit(self, cgroup: str, unit: str, deadline: float) -> None:
        self._end_holder(cgroup)
        self.kill_processes(cgroup, deadline)
        self._stop(unit)
        self.fs.remove(cgroup, max(0.1, deadline - time.monotonic()))

    def join_shim_cgroup(self, cgroup: str, pid: int) -> None:
        """Moves a shim (or the shim template) into `cri-py-shims.scope`, in the slice of
        cri-py's own unit: started with it as its first process, joined afterwards. Failing
        is logged, not fatal: the shim then stays where the daemon runs."""
        try:
            state = self.client.active_state(SHIM_SCOPE)
            if state in ("active", "activating"):
                self.client.attach_processes(SHIM_SCOPE, [pid])
                return
            if state:
                self._stop(SHIM_SCOPE)
            home = own_slice(Path("/proc/self/cgroup").read_text())
            try:
                self.client.start_transient_unit(
                    SHIM_SCOPE, scope_properties("cri-py pod shims", home, [pid], delegate=False)
                )
            except SystemdError as e:
                if e.name != UNIT_EXISTS:  # a concurrent first shim made it
                    raise
                self.client.attach_processes(SHIM_SCOPE, [pid])
        except (OSError, SystemdError) as e:
            log.warning("shim left in the daemon's cgroup", unit=SHIM_SCOPE, pid=pid, error=str(e))

    def units(self) -> list[tuple[str, str]]:
        """The loaded units cri-py makes (name, active state), for the leak checker."""
        return [
            (name, state)
            for name, state in self.client.list_units(["cri-py-*.scope", "*-pod*.slice"])
            if name != SHIM_SCOPE and is_ours(name)
        ]


def _cri_error(unit: str, error: SystemdError) -> CriError:
    if error.name == "org.freedesktop.DBus.Error.InvalidArgs":
        return InvalidArgument(f"systemd unit {unit}: {error}")
    return Internal(f"systemd unit {unit}: {error}")
