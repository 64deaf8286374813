"""Container cgroups: where they live, applying a spec's `linux.resources` at create and at
update (config.json rewritten first, `update_container_resources`), removal.

With the cgroupfs driver (this module; `runtime/systemd_cgroups.py` is the systemd one) the
cgroup of a container is `<sandbox cgroup_parent>/cri-py-<container id>` (kubelet's
cgroupfs driver sends parents such as `/kubepods/burstable/pod<uid>`), or lives under cri-py's
own parent when the sandbox has none. Only these leaves are ever created, written or removed
by cri-py; parents are kubelet's (or ours, for the default one) and stay.

A pod whose sandbox names no parent gets a cgroup of its own, `<default parent>/cri-py-pod-<id>`,
that holds its containers and carries the pod-level limits. Shims live apart, in one shared
cgroup (`cgroups.shim_cgroup`), so their memory is charged neither to a pod nor to whatever
cgroup the daemon was started in.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import posixpath
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cri_py.errors import FailedPrecondition, Internal, InvalidArgument
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode, clean_cgroup_path
from cri_py.linux.device_filter import attach_device_filter
from cri_py.log import get_logger
from cri_py.model.resources import CgroupSupport, Resources
from cri_py.oci.cgroups import Write, read_limits, v1_writes, v2_controllers, v2_writes
from cri_py.oci.devices import v1_device_writes
from cri_py.spec.resources import (
    linux_resources,
    merge_resources,
    unapplied_hugepage_limits,
    updated_linux_resources,
)
from cri_py.store.atomic import write_json_atomic

log = get_logger("cri_py.cgroups")

DEFAULT_PARENT = "/cri-py"
LEAF_PREFIX = "cri-py-"


def container_cgroup(parent: str, container_id: str, default_parent: str = DEFAULT_PARENT) -> str:
    """The cgroup path of a container; `parent` comes from the CRI and is checked."""
    parent = clean_cgroup_path(parent) if parent else clean_cgroup_path(default_parent)
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise InvalidArgument(f"container ID {container_id!r} cannot name a cgroup")
    return f"{parent.rstrip('/')}/{LEAF_PREFIX}{container_id}"


def pod_cgroup(default_parent: str, sandbox_id: str) -> str:
    """The cgroup cri-py makes for a pod whose sandbox names no parent: its containers go
    under it, so the pod-level limits (sum plus overhead) bound them together."""
    return container_cgroup("", f"pod-{sandbox_id}", default_parent)


def is_ours(cgroup: str) -> bool:
    return cgroup.rsplit("/", 1)[-1].startswith(LEAF_PREFIX)


def device_rules_problem(manager: CgroupManager | None) -> str:
    """Why this node cannot enforce a container's device rules, "" when it can: on cgroup
    v2 a BPF program does it (attaching one that fails refuses the container), on v1 the
    devices controller must be mounted; without cgroups nothing does. Containers are then
    confined otherwise or refused (`cri_py.spec.devices.without_device_rules`)."""
    if manager is None:
        return "no cgroup hierarchy is mounted, so cri-py manages no cgroups"
    if manager.mode == CgroupMode.V2:
        return ""
    if "devices" not in manager.fs.controllers():
        return f"no devices controller is mounted on this cgroup {manager.mode.value} node"
    return ""


class CgroupManager:
    """Applies a spec's `linux.resources` to a cgroup: exactly the writes `cri_py.oci.cgroups`
    plans from it, and at create its device rules."""

    # What RuntimeConfig reports (kubelet's cgroupDriver follows it).
    driver = "cgroupfs"

    def __init__(self, fs: Cgroupfs, pids_limit: int = 0) -> None:
        self.fs = fs
        self.pids_limit = pids_limit

    def container_cgroup(self, parent: str, container_id: str, default_parent: str) -> str:
        """The cgroup path of a container under a CRI `cgroup_parent` (or the default)."""
        return container_cgroup(parent, container_id, default_parent)

    def pod_cgroup(self, default_parent: str, sandbox_id: str) -> str:
        """The cgroup cri-py makes for a pod whose sandbox names no parent."""
        return pod_cgroup(default_parent, sandbox_id)

    def check_parent(self, parent: str) -> None:
        """Refuses a CRI `cgroup_parent` this driver cannot use (cgroupfs: at container create,
        where the path is cleaned)."""

    def make_parent(self, parent: str, resources: Mapping[str, Any], owner: str) -> str:
        """Makes the pod cgroup a CRI `cgroup_parent` names when it does not exist, with the
        pod's limits, for sandbox `owner`; the name to record, "" when nothing was made
        (cgroupfs: the parent is made as a plain directory with the first container)."""
        return ""

    def adopt_parent(self, made: str, owner: str) -> None:
        """Recovery: sandbox `owner` recorded that it uses the parent `make_parent` made."""

    def release_parent(self, made: str, owner: str) -> None:
        """Sandbox `owner` no longer uses the parent `make_parent` made; the last one out
        removes it."""

    def parent_cgroup(self, made: str) -> str:
        """The cgroup path of a parent `make_parent` made."""
        return made

    @property
    def mode(self) -> CgroupMode:
        return self.fs.mode

    def controllers(self) -> set[str]:
        """The controllers a container's cgroup can use: v1 the mounted hierarchies', v2 the
        ones the hierarchy's root offers (`cgroup.controllers`)."""
        if self.fs.mode != CgroupMode.V2:
            return self.fs.controllers()
        try:
            root = Path(self.fs.hierarchies[0].mountpoint)
            return set((root / "cgroup.controllers").read_text().split())
        except OSError:
            return set()

    @functools.cached_property
    def support(self) -> CgroupSupport:
        """What specs built for this node add (the configured pids limit) and leave out."""
        return CgroupSupport(pids_limit=self.pids_limit, hugetlb="hugetlb" in self.controllers())

    def warn_unapplied(self, resources: Resources, subject: str) -> None:
        """Logs the huge page limits specs on this node leave out (no hugetlb controller)."""
        dropped = unapplied_hugepage_limits(resources, self.support)
        if dropped:
            log.warning(
                "no hugetlb controller: huge page limits not applied",
                subject=subject,
                limits=",".join(f"{size}={limit}" for size, limit in dropped.items()),
            )

    def linux_resources(self, resources: Resources, subject: str) -> dict[str, Any]:
        """`linux_resources` for this node (a pod cgroup's limits have no spec of their own)."""
        self.warn_unapplied(resources, subject)
        return linux_resources(resources, self.support)

    def plan(self, resources: Mapping[str, Any], current_memsw: int | None = None) -> list[Write]:
        """The limit writes of a spec's `linux.resources` on this node (devices aside)."""
        if self.fs.mode == CgroupMode.V2:
            return v2_writes(resources)
        writes = v1_writes(resources, current_memsw)
        missing = sorted({w.controller for w in writes} - self.fs.controllers())
        if missing:
            raise FailedPrecondition(
                f"cgroup controllers {', '.join(missing)} are not mounted on this node"
            )
        return writes

    def create(self, cgroup: str, resources: Mapping[str, Any]) -> None:
        """Creates the cgroup with the limits and device rules of a spec's `linux.resources`
        (a pod's has no `devices`: its containers carry them); nothing is left if it fails."""
        if not is_ours(cgroup):
            raise InvalidArgument(f"cgroup {cgroup} is not a cri-py container cgroup")
        writes = self.plan(resources)
        self.fs.create(cgroup)
        try:
            self.fs.enable_v2_controllers(cgroup, v2_controllers(writes))
            self.fs.write(cgroup, writes)
            if "devices" in resources:
                self._allow_devices(cgroup, resources["devices"])
        except BaseException:
            self.fs.remove(cgroup)
            raise

    def _allow_devices(self, cgroup: str, rules: Sequence[Mapping[str, Any]]) -> None:
        """The device rules in the v1 devices cgroup, or on v2 as a BPF device program
        attached to the cgroup (`cri_py.oci.device_filter`)."""
        if self.fs.mode == CgroupMode.V2:
            try:
                directories = self.fs.dirs(cgroup)
                if not directories:  # never silently unfiltered
                    raise ValueError("no cgroup v2 directory for it")
                for directory in directories:
                    attach_device_filter(directory, rules)
            except (OSError, ValueError) as e:
                raise Internal(f"cgroup {cgroup}: attaching the device filter: {e}") from None
            return
        if "devices" not in self.fs.controllers():
            # Not silent: the spec was built knowing (device_rules_problem), so the container
            # has no CAP_MKNOD and a nodev rootfs, or was refused.
            return
        try:
            self.fs.write(cgroup, v1_device_writes(rules))
        except (OSError, ValueError) as e:
            raise Internal(f"cgroup {cgroup}: setting the device rules: {e}") from None

    def update(self, cgroup: str, resources: Mapping[str, Any]) -> None:
        """Applies a spec's new `linux.resources` to a live cgroup, all or nothing: on a
        failed write the files already written get their previous values back. The device
        rules are left as created (no update can change them)."""
        current_memsw = None
        if self.fs.mode != CgroupMode.V2 and read_limits(resources).swap:
            current_memsw = _as_limit(self.fs.read(cgroup, "memory", "memory.memsw.limit_in_bytes"))
        writes = self.plan(resources, current_memsw)
        previous = [
            Write(w.controller, w.file, self.fs.read(cgroup, w.controller, w.file)) for w in writes
        ]
        done: list[Write] = []
        try:
            for w in writes:
                self.fs.write(cgroup, [w])
                done.append(w)
        except OSError as e:
            undo = [p for p, w in zip(previous, writes, strict=True) if w in done]
            for p in reversed(undo):
                try:
                    self.fs.write(cgroup, [p])  # values read back are accepted as written
                except OSError:
                    log.error("could not restore cgroup value", cgroup=cgroup, file=p.file)
            if e.errno in (errno.EINVAL, errno.EBUSY, errno.ERANGE):
                raise InvalidArgument(f"cgroup {cgroup}: {e.strerror}") from None
            raise

    def add_process(self, cgroup: str, pid: int) -> None:
        self.fs.add_process(cgroup, pid)

    def join_shim_cgroup(self, cgroup: str, pid: int) -> None:
        """Moves a pod's shim into the shims' cgroup (made on first use, kept: it is shared
        by every shim and outlives daemon restarts). Failing is logged, not fatal: the shim
        then stays where the daemon runs, as with `shim_cgroup: ""`."""
        try:
            self.fs.create(clean_cgroup_path(cgroup))
            self.fs.add_process(cgroup, pid)
        except OSError as e:
            log.warning("shim left in the daemon's cgroup", cgroup=cgroup, pid=pid, error=str(e))

    def procs_files(self, cgroup: str) -> list[str]:
        """The file of the cgroup in every hierarchy that a setup process writes "0" to, to
        move itself (and its future children) into the container's cgroup. On v1 `tasks`: it
        moves the writing thread, and a setup process has only that one. cgroup.procs moves a
        whole thread group, under the kernel's threadgroup lock, whose first writer after a
        quiet spell waits an RCU grace period (~10 ms, every CreateContainer); a thread moving
        itself skips that lock. v2 has cgroup.procs only."""
        name = "cgroup.procs" if self.fs.mode == CgroupMode.V2 else "tasks"
        return [str(d / name) for d in self.fs.dirs(cgroup)]

    def mount_sources(self, cgroup: str) -> list[tuple[str, str]]:
        """What a container's /sys/fs/cgroup shows: (dir name, host dir) per hierarchy, the
        name being the hierarchy's own (cpu,cpuacct, memory, systemd); "" on cgroup v2."""
        if self.fs.mode == CgroupMode.V2:
            return [("", str(self.fs.dirs(cgroup)[0]))]
        return [
            (posixpath.basename(h.mountpoint), str(d))
            for h, d in zip(self.fs.hierarchies, self.fs.dirs(cgroup), strict=True)
        ]

    def oom_file(self, cgroup: str) -> str:
        """The file whose `oom_kill` counter counts the kernel's OOM kills in this cgroup."""
        if self.fs.mode == CgroupMode.V2:
            return str(self.fs.file(cgroup, "", "memory.events"))
        try:
            return str(self.fs.file(cgroup, "memory", "memory.oom_control"))
        except OSError:
            return ""  # no memory controller: OOM kills cannot be told apart

    def remove(self, cgroup: str, timeout: float = 5.0) -> None:
        """Removes the cgroup. Processes left in it (a container sharing the pod's PID
        namespace leaves its orphans behind when its init ends) are killed first: they are
        the container's, and an rmdir of a populated cgroup fails with EBUSY."""
        if not is_ours(cgroup):
            raise InvalidArgument(f"cgroup {cgroup} is not a cri-py container cgroup")
        deadline = time.monotonic() + timeout
        self.kill_processes(cgroup, deadline)
        self.fs.remove(cgroup, max(0.1, deadline - time.monotonic()))

    def kill_processes(self, cgroup: str, deadline: float) -> None:
        """SIGKILL to what is left in the cgroup until it is empty or `deadline` passes."""
        while (pids := self.fs.pids(cgroup)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)


def _as_limit(value: str) -> int | None:
    """A v1 limit file's value; the kernel shows "unlimited" as a huge page-aligned number."""
    number = int(value)
    return None if number >= 2**62 else number


def update_container_resources(
    manager: CgroupManager, cgroup: str, bundle: Path, current: Resources, update: Resources
) -> Resources:
    """UpdateContainerResources on a container's bundle and cgroup, through the translations
    its create used: `update` merged into `current` (`merge_resources`), the bundle's
    config.json rewritten atomically with the resulting `linux.resources`, then that same
    object applied to the cgroup. If the cgroup refuses it, config.json gets its previous
    `linux.resources` back. Returns the merged values (the record's new resources)."""
    merged = merge_resources(current, update)
    path = bundle / "config.json"
    try:
        spec: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FailedPrecondition(
            f"cgroup {cgroup}: the container's spec is unreadable ({e})"
        ) from None
    linux = spec.setdefault("linux", {})
    previous = linux.get("resources")
    resources = updated_linux_resources(previous or {}, merged, manager.support)
    manager.warn_unapplied(merged, cgroup)
    linux["resources"] = resources
    write_json_atomic(path, spec)
    try:
        manager.update(cgroup, resources)
    except BaseException:
        if previous is None:
            del linux["resources"]
        else:
            linux["resources"] = previous
        write_json_atomic(path, spec)
        raise
    return merged
