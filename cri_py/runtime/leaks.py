"""The leak checker: what on this host looks like cri-py's but is not accounted for in its state.

`compare` is pure: a snapshot of the host (mounts, bridge ports, cgroups, shim processes, state
dirs) against a snapshot of the store (records and the address table). `find_leaks` takes both
snapshots read-only, twice, a few seconds apart, and reports only what both rounds call a leak,
so it is safe beside a running daemon whose operations are half-way through.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cri_py.config import Config
from cri_py.errors import CriError
from cri_py.linux.cgroupfs import Cgroupfs
from cri_py.linux.mountinfo import mount_points
from cri_py.linux.systemd import SystemdClient, SystemdError, systemd_is_init
from cri_py.model.container import ContainerRecord
from cri_py.model.sandbox import Phase, SandboxRecord
from cri_py.network.bridge import LINK_PREFIX
from cri_py.oci.systemd import PARENT_SLICE_DESCRIPTION, SHIM_SCOPE, expand_slice, slice_name
from cri_py.oci.systemd import is_ours as systemd_is_ours
from cri_py.runtime.cgroups import LEAF_PREFIX
from cri_py.store.atomic import read_json
from cri_py.store.codec import from_data

R = TypeVar("R")

_ID = re.compile(r"^[0-9a-f]{64}$")
_ID_IN_NAME = re.compile(r"[0-9a-f]{64}")
_VETH = re.compile(rf"^{re.escape(LINK_PREFIX)}([0-9a-f]{{9}})$")
# How long a candidate must stay a leak before it is reported (operations in flight settle).
SETTLE_SECONDS = 2.0
# Phases in which a sandbox may hold namespaces, a shim, a veth and an address.
_HOLDING = (Phase.CREATING, Phase.CREATED)


@dataclass(frozen=True, order=True)
class Leak:
    kind: str  # mount, veth, ip, cgroup, unit, shim, dir, record, lease, removal
    path: str  # what it is: a mount point, link, address, cgroup, PID, ID or lease owner
    description: str = field(compare=False, default="")

    def __str__(self) -> str:
        return f"{self.kind} {self.path}: {self.description}"


@dataclass(frozen=True)
class HostSnapshot:
    mounts: frozenset[str] = frozenset()  # mount points under the root and run dirs
    veths: frozenset[str] = frozenset()  # links enslaved to cri-py's bridge
    cgroups: frozenset[str] = frozenset()  # cri-py-named cgroups under the parents looked at
    units: frozenset[str] = frozenset()  # systemd driver: loaded cri-py scopes and pod slices
    # systemd driver: the loaded pod parent slices cri-py made (by their description).
    parent_slices: frozenset[str] = frozenset()
    shims: Mapping[int, str] = field(default_factory=dict)  # PID -> sandbox ID of its bundle
    parents: Mapping[int, int] = field(default_factory=dict)  # PID -> parent PID, of `shims`
    run_dirs: frozenset[str] = frozenset()  # sandbox IDs with a dir under <run_dir>/sandboxes
    sandbox_dirs: frozenset[str] = frozenset()  # IDs with a dir under <root_dir>/sandboxes
    container_dirs: frozenset[str] = frozenset()  # IDs with a dir under <root_dir>/containers


@dataclass(frozen=True)
class StoreSnapshot:
    sandboxes: Mapping[str, SandboxRecord] = field(default_factory=dict)
    containers: Mapping[str, ContainerRecord] = field(default_factory=dict)
    allocations: Mapping[str, str] = field(default_factory=dict)  # address -> sandbox ID
    # Owners of image layer leases (a container ID, or `<container ID>/...` for its volumes).
    leases: frozenset[str] = frozenset()
    # Removed containers whose cleanup is not finished (`<root_dir>/removing/containers`).
    removing: Mapping[str, ContainerRecord] = field(default_factory=dict)


def compare(host: HostSnapshot, store: StoreSnapshot) -> list[Leak]:
    """Everything in `host` that no record in `store` accounts for, sorted."""
    holding = {i: r for i, r in store.sandboxes.items() if r.phase in _HOLDING}
    leaks: list[Leak] = []

    held_mounts: set[str] = set()
    for record in holding.values():
        held_mounts.update(record.namespaces.values())
        if record.shm_path:
            held_mounts.add(record.shm_path)
    for point in host.mounts - held_mounts:
        leaks.append(Leak("mount", point, "no running or starting sandbox holds it"))

    for name in host.veths:
        match = _VETH.match(name)
        if match and not any(i.startswith(match.group(1)) for i in holding):
            leaks.append(Leak("veth", name, "on cri-py's bridge; no running sandbox owns it"))

    for address, owner in store.allocations.items():
        if owner not in holding:
            state = "stopped" if owner in store.sandboxes else "gone"
            leaks.append(Leak("ip", address, f"allocated to sandbox {owner}, which is {state}"))

    # A removed container's cgroup, scope and lease are its cleanup's to remove (the daemon's,
    # or its next start's): the unfinished cleanup is what is reported.
    known = set(store.sandboxes) | set(store.containers) | set(store.removing)
    for container_id in store.removing:
        leaks.append(Leak("removal", container_id, "a removed container's cleanup is not finished"))
    for cgroup in host.cgroups:
        owners = _ID_IN_NAME.findall(posixpath.basename(cgroup))
        if owners and not any(o in known for o in owners):
            leaks.append(Leak("cgroup", cgroup, "no container or sandbox record names it"))

    for unit in host.units:
        owners = _ID_IN_NAME.findall(unit)
        if owners and not any(o in known for o in owners):
            leaks.append(Leak("unit", unit, "a systemd unit no container or sandbox record names"))

    made_parents = {r.made_parent for r in store.sandboxes.values()}
    for unit in host.parent_slices - made_parents:
        leaks.append(Leak("unit", unit, "a pod parent slice cri-py made; no sandbox records it"))

    for pid, sandbox_id in host.shims.items():
        shim_owner = holding.get(sandbox_id)
        if shim_owner is None:
            why = "stopped" if sandbox_id in store.sandboxes else "without a record"
            leaks.append(Leak("shim", str(pid), f"shim of sandbox {sandbox_id}, {why}"))
        elif shim_owner.shim and not {pid, host.parents.get(pid, 0)} & {
            shim_owner.shim.pid,
            shim_owner.shim.init_pid,
        }:
            # The shim's own children (a container's PID-namespace parent, an exec) start
            # with its command line too.
            why = f"a second shim of sandbox {sandbox_id} (its record names {shim_owner.shim.pid})"
            leaks.append(Leak("shim", str(pid), why))

    for kind, ids, records in (
        ("sandbox run dir", host.run_dirs, store.sandboxes),
        ("sandbox dir", host.sandbox_dirs, store.sandboxes),
        ("container dir", host.container_dirs, store.containers),
    ):
        for object_id in ids:
            if object_id not in records:
                leaks.append(Leak("dir", object_id, f"{kind} without a readable record"))

    for owner in store.leases:
        if owner.split("/", 1)[0] not in {*store.containers, *store.removing}:
            leaks.append(Leak("lease", owner, "image layers leased to a container with no record"))

    for container in store.containers.values():
        if container.sandbox_id not in store.sandboxes:
            leaks.append(
                Leak("record", container.id, f"container of sandbox {container.sandbox_id}, gone")
            )
    return sorted(leaks)


# --- reading the store (never writing: the daemon may be running) --------------------------


def _records(root: Path, kind: str, record_type: type[R]) -> dict[str, R]:
    found: dict[str, R] = {}
    with contextlib.suppress(FileNotFoundError):
        for directory in root.iterdir():
            if not _ID.match(directory.name):
                continue
            try:
                data = read_json(directory / f"{kind}.json")
                if data is not None:
                    found[directory.name] = from_data(record_type, data)
            except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
                continue  # unreadable: its dir is reported as one without a record
    return found


def read_store(config: Config) -> StoreSnapshot:
    root = Path(config.root_dir)
    sandboxes = _records(root / "sandboxes", "sandbox", SandboxRecord)
    containers = _records(root / "containers", "container", ContainerRecord)
    removing = _records(root / "removing" / "containers", "container", ContainerRecord)
    allocations: Mapping[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        stored = read_json(root / "network" / "allocations.json") or {}
        allocations = dict(stored.get("allocations", {}))
    leases: frozenset[str] = frozenset()
    with contextlib.suppress(OSError, ValueError, AttributeError):
        stored = read_json(root / "images" / "images.json") or {}
        leases = frozenset(stored.get("leases", {}))
    return StoreSnapshot(sandboxes, containers, allocations, leases, removing)


# --- reading the host ----------------------------------------------------------------------


def _under(path: str, roots: Iterable[str]) -> bool:
    """Strictly below a root: the root dir itself may well be a mount (a disk of its own)."""
    return any(path.startswith(r.rstrip("/") + "/") for r in roots)


def _ids_in(directory: Path) -> frozenset[str]:
    try:
        return frozenset(p.name for p in directory.iterdir() if _ID.match(p.name))
    except FileNotFoundError:
        return frozenset()


def _bridge_ports(bridge: str) -> frozenset[str]:
    try:
        return frozenset(os.listdir(f"/sys/class/net/{bridge}/brif"))
    except OSError:
        return frozenset()


def _shims(run_dir: str) -> dict[int, str]:
    """Processes started as `python -m cri_py.shim <run_dir>/sandboxes/<id>` (what a shim
    forks has the same command line until it execs)."""
    sandboxes = os.path.normpath(os.path.join(run_dir, "sandboxes"))
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            args = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cri_py.shim" not in args[:-1]:
            continue
        bundle = os.fsdecode(args[args.index(b"cri_py.shim") + 1])
        if os.path.dirname(os.path.normpath(bundle)) == sandboxes:
            found[int(name)] = os.path.basename(bundle)
    return found


def _cgroups(parents: Iterable[str]) -> frozenset[str]:
    """cri-py-named cgroups up to two levels below each parent (a pod's, then its
    containers'), in any hierarchy."""
    try:
        fs = Cgroupfs.from_host()
    except OSError:
        return frozenset()
    found = set()
    for parent in parents:
        try:
            directories = fs.dirs(parent)
        except CriError:  # a parent outside what this host's hierarchies show
            continue
        for directory in directories:
            with contextlib.suppress(OSError):
                for child in directory.iterdir():
                    if not (child.is_dir() and child.name.startswith(LEAF_PREFIX)):
                        continue
                    found.add(f"{parent.rstrip('/')}/{child.name}")
                    for grandchild in child.iterdir():
                        if grandchild.is_dir() and grandchild.name.startswith(LEAF_PREFIX):
                            found.add(f"{parent.rstrip('/')}/{child.name}/{grandchild.name}")
    return frozenset(found)


def _slice_path(parent: str) -> str:
    if not parent.endswith(".slice"):
        return parent
    try:
        return expand_slice(slice_name(parent))
    except CriError:
        return ""


def _systemd_units() -> tuple[frozenset[str], frozenset[str]]:
    """The loaded units named as cri-py names its scopes and pod slices (the shims' scope
    aside), and the slices described as pod parents cri-py made; none when systemd does not
    answer."""
    client = SystemdClient()
    try:
        listed = client.list_units(["cri-py-*.scope", "*-pod*.slice"])
        slices = client.list_unit_descriptions(["*.slice"])
    except SystemdError:
        return frozenset(), frozenset()
    finally:
        client.close()
    made = frozenset(
        name for name, description in slices if description == f"{PARENT_SLICE_DESCRIPTION} {name}"
    )
    units = frozenset(name for name, _ in listed if name != SHIM_SCOPE and systemd_is_ours(name))
    return units, made


def _parent_pid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def read_host(config: Config, store: StoreSnapshot) -> HostSnapshot:
    """What the host holds that may be cri-py's; `store` says which cgroup parents to look in."""
    roots = [os.path.normpath(config.root_dir), os.path.normpath(config.run_dir)]
    mounts = frozenset(
        m for m in mount_points(Path("/proc/self/mountinfo").read_text()) if _under(m, roots)
    )
    parents = {config.cgroups.default_parent}
    parents.update(r.config.cgroup_parent for r in store.sandboxes.values())
    units: frozenset[str] = frozenset()
    parent_slices: frozenset[str] = frozenset()
    if config.cgroups.driver == "systemd" or (not config.cgroups.driver and systemd_is_init()):
        units, parent_slices = _systemd_units()
        parents.add(config.cgroups.default_slice)
        # Slice names (kubelet's parents under this driver) as the paths systemd gives them.
        parents = {_slice_path(p) for p in parents}
    root = Path(config.root_dir)
    shims = _shims(config.run_dir)
    return HostSnapshot(
        mounts=mounts,
        veths=_bridge_ports(config.network.bridge),
        cgroups=_cgroups(sorted(p for p in parents if p)),
        units=units,
        parent_slices=parent_slices,
        shims=shims,
        parents={pid: _parent_pid(pid) for pid in shims},
        run_dirs=_ids_in(Path(config.run_dir) / "sandboxes"),
        sandbox_dirs=_ids_in(root / "sandboxes"),
        container_dirs=_ids_in(root / "containers"),
    )


def _scan(config: Config) -> list[Leak]:
    # The host first, then the store: objects are recorded before they are made, so a
    # creation in between is seen in the store; a removal in between is settled by the
    # second round.
    previous = read_store(config)
    host = read_host(config, previous)
    return compare(host, read_store(config))


def find_leaks(config: Config, settle_seconds: float = SETTLE_SECONDS) -> list[Leak]:
    """What looks like cri-py's on this host but is in no record, read-only. A candidate must
    still be one `settle_seconds` later (something made in the last instants is not a leak)."""
    first = _scan(config)
    if not first or settle_seconds <= 0:
        return first
    time.sleep(settle_seconds)
    again = set(_scan(config))
    return [leak for leak in first if leak in again]
