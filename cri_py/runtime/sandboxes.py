"""Pod sandboxes: run, stop, remove, status and list, and recovery after a daemon restart.

A sandbox is a shim process holding the pod's namespaces (pinned under the run dir), a record in
the store, the pod's files, a /dev/shm tmpfs and, with pod networking, a veth and an address.
Queries are answered from memory; commands are blocking (netlink, mounts, the shim's socket)
and run on worker threads, one command at a time per sandbox.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from cri_py.config import Config
from cri_py.errors import (
    CriError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
)
from cri_py.linux import features, syscalls
from cri_py.linux.namespaces import new_netns, pin_namespace, unpin_namespace
from cri_py.log import get_logger
from cri_py.model.network import NetworkState
from cri_py.model.resources import Resources
from cri_py.model.sandbox import (
    NamespaceMode,
    Phase,
    SandboxConfig,
    SandboxFilter,
    SandboxRecord,
    SandboxState,
    SandboxView,
    ShimInfo,
)
from cri_py.network.hostports import HostPorts
from cri_py.network.selector import BUILTIN, NetworkSelector
from cri_py.runtime import pod_files
from cri_py.runtime.background import settled, started
from cri_py.runtime.cgroups import CgroupManager
from cri_py.runtime.events import EventType
from cri_py.runtime.handlers import RuntimeHandlers, check_pod
from cri_py.runtime.lifecycle_hooks import NO_HOOKS, LifecycleHooks
from cri_py.runtime.registry import Registry
from cri_py.runtime.sandbox_host import (
    kill_unrecorded_shim,
    read_host_resolv_conf,
    shim_process,
    unmount,
    write_pod_file,
)
from cri_py.runtime.sandbox_rules import (
    NameKey,
    matches,
    name_conflict,
    name_key,
    validate_config,
)
from cri_py.shim.client import ShimClient, ShimError, ShimTemplate, start_shim, stop_shim
from cri_py.shim.spec import ShimSpec, is_net_sysctl, write_sysctls
from cri_py.shim.watcher import ShimWatcher
from cri_py.spec.resources import pod_resources, validate_resources
from cri_py.spec.userns import map_file
from cri_py.store.atomic import sync_files
from cri_py.store.sandboxes import SandboxStore
from cri_py.store.trash import Trash

log = get_logger("cri_py.sandboxes")

HOST_SHM = "/dev/shm"
# Docker's and containerd's default size of a pod's /dev/shm.
SHM_OPTIONS = "mode=1777,size=65536k"


class SandboxService:
    def __init__(
        self,
        config: Config,
        network: NetworkSelector,
        hostports: HostPorts | None = None,
        cgroups: CgroupManager | None = None,
    ) -> None:
        self._cgroups = cgroups
        self._root_dir = config.root_dir
        # RuntimeClass handlers: RunPodSandbox picks one, the container service reads it.
        self.handlers = RuntimeHandlers(config)
        self._cgroup_config = config.cgroups
        # Shims are forked from a template process, born in the shims' cgroup.
        self._template = ShimTemplate(
            Path(config.run_dir) / "shim-template.log", self._template_started
        )
        # hostPorts of built-in-network pods (CNI pods get theirs from the portmap plugin).
        self._hostports = hostports
        self._store = SandboxStore(Path(config.root_dir) / "sandboxes")
        self._run_root = Path(config.run_dir) / "sandboxes"
        self._run_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Bundles leave by a rename, beside them on the run dir's filesystem (store.trash).
        self._bundle_trash = Trash(self._run_root.parent / "trash" / "sandboxes")
        self._network = network
        self._registry: Registry[SandboxRecord, NameKey] = Registry(
            "pod sandbox", lambda r: name_key(r.config), name_conflict
        )
        # Pods whose shim is alive (READY when also CREATED); guarded by its own lock.
        self._alive_lock = threading.Lock()
        self._alive: set[str] = set()
        self._watcher = ShimWatcher(self._on_shim_exit)
        # The container service's: stop a pod's containers before its shim goes, remove them
        # before the pod's record goes (called with the sandbox's full ID, on worker threads).
        self.before_stop: Callable[[str], None] = lambda sandbox_id: None
        self.after_stop: Callable[[str], None] = lambda sandbox_id: None
        self.before_remove: Callable[[str], None] = lambda sandbox_id: None
        # The container service's: its event feed from a new pod's shim, made while the pod's
        # network is set up rather than in the first CreateContainer (undone by after_stop).
        self.shim_started: Callable[[str], None] = lambda sandbox_id: None
        # Told of the sandbox's own lifecycle events (GetContainerEvents; containerd sends
        # them too and kubelet's Evented PLEG drops a pod from its cache on DELETED).
        self.on_event: Callable[[EventType, SandboxView], None] = lambda kind, view: None
        # Extensions (NRI) told of each pod event; set by the daemon.
        self.hooks: LifecycleHooks = NO_HOOKS

    def shim_bundle(self, sandbox_id: str) -> Path:
        """The sandbox's run dir: the shim's socket, spec and log."""
        return self._bundle(sandbox_id)

    def files_dir(self, sandbox_id: str) -> Path:
        """Where the pod's hostname, hosts and resolv.conf files are."""
        return self._store.dir_of(sandbox_id)

    # --- queries: memory only -------------------------------------------------------------

    def _view(self, record: SandboxRecord) -> SandboxView:
        ready = record.phase == Phase.CREATED and record.id in self._alive
        return SandboxView(record, SandboxState.READY if ready else SandboxState.NOTREADY)

    def status(self, sandbox_id: str) -> SandboxView:
        record = self._registry.find(sandbox_id)
        with self._alive_lock:
            return self._view(record)

    def list(self, selector: SandboxFilter) -> list[SandboxView]:
        records = self._registry.records()
        with self._alive_lock:
            views = [self._view(r) for r in records]
        return [v for v in views if matches(v, selector)]

    def list_generation(self) -> tuple[int, frozenset[str]]:
        """Equal for two calls of `list` only if every view is the same: the records'
        generation and which pods' shims are alive (their READY state)."""
        with self._alive_lock:
            return self._registry.generation, frozenset(self._alive)

    def network_state(self) -> NetworkState:
        return self._network.state()

    @property
    def network(self) -> NetworkSelector:
        return self._network

    def shim_count(self) -> int:
        """Shim processes alive (one per pod that is not stopped)."""
        with self._alive_lock:
            return len(self._alive)

    # --- commands -------------------------------------------------------------------------

    def run(self, config: SandboxConfig, runtime_handler: str) -> str:
        handler = self.handlers.get(runtime_handler)
        validate_config(config)
        check_pod(handler, runtime_handler, config.namespaces.user.mode == NamespaceMode.POD)
        if config.namespaces.user.mode == NamespaceMode.POD:
            problem = features.user_namespaces_problem(self._root_dir)
            if problem:
                raise FailedPrecondition(f"user namespaces do not work on this host: {problem}")
        sandbox_id = secrets.token_hex(32)
        started = time.perf_counter()
        try:
            # The name is released (and the ID's lock dropped) if anything below fails.
            with (
                self._registry.reserving(name_key(config), sandbox_id),
                self._registry.operation(sandbox_id),
            ):
                record = self._create(sandbox_id, config, runtime_handler)
                assert record.shim is not None
                # Alive before visible: a lister must never see the new pod NOTREADY. A shim
                # that dies from here on is taken out again by the watcher's callback.
                with self._alive_lock:
                    self._alive.add(sandbox_id)
                if not self._watcher.watch(sandbox_id, shim_process(record.shim)):
                    with self._alive_lock:
                        self._alive.discard(sandbox_id)
                self._registry.put(record)
        except BaseException as e:
            with self._alive_lock:
                self._alive.discard(sandbox_id)
            if isinstance(e, CriError) or not isinstance(e, Exception):
                raise
            # Kernel, netlink or shim trouble: not a bug of ours, but worth its traceback.
            log.error("RunPodSandbox failed, undone", exc_info=True, sandbox=sandbox_id)
            pod = f"{config.metadata.namespace}/{config.metadata.name}"
            raise Internal(f"pod sandbox for {pod} failed and was undone: {e}") from e
        log.info(
            "sandbox ready",
            sandbox=sandbox_id,
            pod=f"{config.metadata.namespace}/{config.metadata.name}",
            ip=record.ip,
            pid=record.shim.pid,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        with self._alive_lock:
            view = self._view(record)
        for kind in (EventType.CREATED, EventType.STARTED):
            self.on_event(kind, view)
        return sandbox_id

    def _bundle(self, sandbox_id: str) -> Path:
        return self._run_root / sandbox_id

    def _create(self, sandbox_id: str, config: SandboxConfig, handler: str) -> SandboxRecord:
        """Builds everything; any failure undoes what was done, in reverse order."""
        ns = config.namespaces
        host_network = ns.network == NamespaceMode.NODE
        host_ipc = ns.ipc == NamespaceMode.NODE
        hostname = pod_files.pod_hostname(
            config.hostname, config.metadata.name, host_network, os.uname().nodename
        )
        bundle = self._bundle(sandbox_id)
        # Decided before anything exists, and recorded, so every teardown uses this network.
        network_kind = "" if host_network else self._network.choose()
        pins: dict[str, str] = {}
        if not host_network:
            pins["net"] = str(bundle / "ns" / "net")
            pins["uts"] = str(bundle / "ns" / "uts")
        if not host_ipc:
            pins["ipc"] = str(bundle / "ns" / "ipc")
        if ns.pid == NamespaceMode.POD:
            pins["pid"] = str(bundle / "ns" / "pid")
        own_users = ns.user.mode == NamespaceMode.POD
        if own_users:
            # Pinned by the shim, which creates it (see cri_py.shim.main).
            pins["user"] = str(bundle / "ns" / "user")
        record = SandboxRecord(
            id=sandbox_id,
            config=config,
            created_at=time.time_ns(),
            phase=Phase.CREATING,
            runtime_handler=handler,
            namespaces=pins,
            shm_path=HOST_SHM if host_ipc else str(bundle / "shm"),
            hostname=hostname,
            network=network_kind,
            cgroup=self._pod_cgroup_path(sandbox_id, config),
        )
        with contextlib.ExitStack() as undo:
            # The record first: a crash from here on leaves something a restart rolls back.
            undo.callback(self._store.delete, sandbox_id)
            # The records before the last are not durable: a crash of the daemon finds them in
            # the page cache; a power loss leaves nothing of the pod running.
            self._store.save(record, durable=False)
            files = self._store.dir_of(sandbox_id)
            undo.callback(self._bundle_trash.discard, bundle)
            (bundle / "ns").mkdir(mode=0o700, parents=True)
            # The pod's network namespace is made first, unless the pod has its own users (then
            # the shim makes it inside their namespace): its network (CNI ADD, ~15 ms of plugin
            # runs) is then set up on a thread of its own while the rest of the pod is made.
            early_net = not host_network and not own_users
            shim_sysctls = dict(config.sysctls)
            network: Future[tuple[str, ...]] | None = None
            if early_net:
                net_sysctls = {k: v for k, v in shim_sysctls.items() if is_net_sysctl(k)}
                shim_sysctls = {k: v for k, v in shim_sysctls.items() if k not in net_sysctls}
                undo.callback(unpin_namespace, Path(pins["net"]))
                new_netns(Path(pins["net"]), lambda: write_sysctls(net_sysctls))
                undo.callback(self._network.teardown, network_kind, sandbox_id, files)
                network = started(
                    self._network.setup, network_kind, sandbox_id, Path(pins["net"]), files, config
                )
                # An undo waits for the ADD to end before the teardown above runs.
                undo.callback(settled, network)
            if record.cgroup:
                undo.callback(self._remove_pod_cgroup, record)
                self._create_pod_cgroup(record)
            elif config.cgroup_parent and self._cgroups is not None:
                made = self._make_parent(record)
                if made:
                    record = dataclasses.replace(record, made_parent=made)
                    undo.callback(self._release_parent, record)
                    self._store.save(record, durable=False)
            write_pod_file(files / "hostname", pod_files.hostname_file(hostname))
            write_pod_file(files / "hosts", pod_files.hosts_file(hostname, ()))
            write_pod_file(
                files / "resolv.conf", pod_files.resolv_conf(config.dns, read_host_resolv_conf())
            )
            if not host_ipc:
                shm = bundle / "shm"
                shm.mkdir(mode=0o755)
                undo.callback(unmount, shm)
                syscalls.mount(
                    "shm",
                    shm,
                    "tmpfs",
                    syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
                    SHM_OPTIONS,
                )
            spec = ShimSpec(
                sandbox_id=sandbox_id,
                hostname=hostname if not host_network else "",
                new_net=not host_network and not early_net,
                net_path=pins["net"] if early_net else "",
                new_ipc=not host_ipc,
                new_uts=not host_network,
                new_pid=ns.pid == NamespaceMode.POD,
                sysctls=shim_sysctls,
                uid_map=map_file(ns.user.uids) if own_users else "",
                gid_map=map_file(ns.user.gids) if own_users else "",
                user_pin=pins.get("user", ""),
            )
            if own_users:
                undo.callback(unpin_namespace, Path(pins["user"]))
            # Forked by the template, a shim is born in the shims' cgroup; exec'd (no template
            # could start), it is moved there.
            template = self._template if self._template.ready() else None
            shim = start_shim(bundle, spec, template=template)
            undo.callback(stop_shim, bundle, shim)
            if template is None:
                self._join_shim_cgroup(shim.pid, shim.init_pid)
            record = dataclasses.replace(
                record, shim=ShimInfo(shim.pid, shim.start_time, shim.init_pid)
            )
            self._store.save(record, durable=False)  # a restart knows which process to stop
            for kind, path in pins.items():
                if kind == "user" or (kind == "net" and early_net):
                    continue  # the shim's pin, or ours from above
                undo.callback(unpin_namespace, Path(path))
                pin_namespace(shim.init_pid if kind == "pid" else shim.pid, kind, Path(path))
            undo.callback(self.after_stop, sandbox_id)
            subscribed = started(self.shim_started, sandbox_id)
            undo.callback(settled, subscribed)  # over before after_stop unsubscribes
            if not host_network:
                if network is not None:
                    ips = network.result()
                else:
                    undo.callback(self._network.teardown, network_kind, sandbox_id, files)
                    ips = self._network.setup(
                        network_kind, sandbox_id, Path(pins["net"]), files, config
                    )
                record = dataclasses.replace(
                    record, ip=ips[0] if ips else "", additional_ips=ips[1:]
                )
                write_pod_file(files / "hosts", pod_files.hosts_file(hostname, ips))
                if network_kind == BUILTIN and self._hostports and ips:
                    undo.callback(self._hostports.close, sandbox_id)
                    self._hostports.open(sandbox_id, ips[0], config.port_mappings)
            # Plugins see the pod set up but not yet visible; a refusal undoes it all.
            self.hooks.run_pod_sandbox(record)
            record = dataclasses.replace(record, phase=Phase.CREATED)
            unsynced = self._network.unsynced(network_kind, files)
            synced = started(sync_files, *unsynced) if unsynced else None
            self._store.save(record)  # its directory's fsync takes the CNI cache's entry too
            if synced is not None:
                synced.result()
            subscribed.result()
            undo.pop_all()
        return record

    def _release(self, record: SandboxRecord) -> None:
        """Tears down what a running sandbox holds; idempotent, works on half-built ones."""
        sandbox_id = record.id
        bundle = self._bundle(sandbox_id)
        self._watcher.unwatch(sandbox_id)
        with self._alive_lock:
            self._alive.discard(sandbox_id)
        if self._hostports:
            self._hostports.close(sandbox_id)
        # The network's teardown (CNI DEL: the bridge plugin waits for the kernel to delete
        # the veth) and the shim's stop overlap: the namespaces are pinned, not held by the
        # shim, and unpinned only once both are done.
        teardown: Future[None] | None = None
        if record.config.namespaces.network != NamespaceMode.NODE:
            teardown = started(
                self._network.teardown, record.network, sandbox_id, self._store.dir_of(sandbox_id)
            )
        try:
            if record.shim is not None:
                stop_shim(bundle, shim_process(record.shim))
            else:
                # Crashed between starting the shim and recording it, maybe before it served
                # its socket: its processes are the ones started for this bundle.
                kill_unrecorded_shim(bundle)
        finally:
            if teardown is not None:
                settled(teardown)
        if teardown is not None:
            teardown.result()
        for path in record.namespaces.values():
            unpin_namespace(Path(path))
        if record.shm_path and record.shm_path != HOST_SHM:
            unmount(Path(record.shm_path))

    def stop(self, sandbox_id: str) -> None:
        """Stops the pod: network torn down, shim gone, namespaces released. Idempotent."""
        with self._registry.operation_if_any(sandbox_id) as record:
            if record is None:
                return
            full = record.id
            self.before_stop(full)
            if record.phase != Phase.STOPPED:
                # Its containers are stopped, the sandbox not yet torn down (as containerd).
                self.hooks.stop_pod_sandbox(record)
            self._release(record)
            self.after_stop(full)
            if record.phase != Phase.STOPPED:
                record = dataclasses.replace(record, phase=Phase.STOPPED)
                # Not durable: a power loss stops every pod, and a pod recorded as running
                # whose shim is gone is reported not ready and released again when stopped.
                self._store.save(record, durable=False)
                self._registry.put(record)
                log.info("sandbox stopped", sandbox=full)
                self.on_event(EventType.STOPPED, SandboxView(record, SandboxState.NOTREADY))

    def remove(self, sandbox_id: str) -> None:
        """Removes every trace of the pod (stopping it first if needed). Idempotent."""
        with self._registry.operation_if_any(sandbox_id) as record:
            if record is None:
                return
            full = record.id
            self.before_stop(full)
            if record.phase == Phase.CREATED:
                self.hooks.stop_pod_sandbox(record)
            self._release(record)
            self.after_stop(full)
            self.before_remove(full)
            self._remove_pod_cgroup(record)
            self._release_parent(record)
            self._bundle_trash.discard(self._bundle(full))
            self._store.delete(full)
            self._registry.forget(full)
            self.hooks.remove_pod_sandbox(record)
            log.info("sandbox removed", sandbox=full)
            self.on_event(EventType.DELETED, SandboxView(record, SandboxState.NOTREADY))

    def _on_shim_exit(self, sandbox_id: str) -> None:
        with self._alive_lock:
            self._alive.discard(sandbox_id)
        record = self._registry.get(sandbox_id)
        if record is not None and record.phase == Phase.CREATED:
            log.warning("shim exited; sandbox is NOTREADY", sandbox=sandbox_id)
            self.on_event(EventType.STOPPED, SandboxView(record, SandboxState.NOTREADY))

    def update_resources(self, sandbox_id: str, resources: Resources, overhead: Resources) -> None:
        """UpdatePodSandboxResources: kubelet has resized the pod. The pod cgroup cri-py made
        takes the new limits first (all or nothing), then the record; kubelet's own pod cgroup
        is kubelet's to size, so for those pods only the record changes."""
        validate_resources(resources)
        validate_resources(overhead)
        with self._registry.operation_on(sandbox_id) as record:
            self.hooks.update_pod_sandbox(record, resources, overhead)
            cgroup = record.cgroup
            if record.made_parent and self._cgroups is not None:
                cgroup = self._cgroups.parent_cgroup(record.made_parent)
            if cgroup and record.phase != Phase.STOPPED and self._cgroups is not None:
                try:
                    limits = pod_resources(resources, overhead)
                    self._cgroups.update(cgroup, self._cgroups.linux_resources(limits, record.id))
                except OSError as e:
                    raise Internal(f"pod cgroup {cgroup}: {e}") from None
            config = dataclasses.replace(record.config, resources=resources, overhead=overhead)
            record = dataclasses.replace(record, config=config)
            self._store.save(record)
            self._registry.put(record)
        self.hooks.post_update_pod_sandbox(record)
        log.info("pod resources updated", sandbox=record.id, cgroup=cgroup or "(kubelet's)")

    # --- cgroups --------------------------------------------------------------------------

    def _pod_cgroup_path(self, sandbox_id: str, config: SandboxConfig) -> str:
        if self._cgroups is None:
            return ""
        if config.cgroup_parent:
            self._cgroups.check_parent(config.cgroup_parent)  # e.g. a slice for systemd
            return ""
        return self._cgroups.pod_cgroup(self._cgroup_config.default_parent, sandbox_id)

    def _create_pod_cgroup(self, record: SandboxRecord) -> None:
        assert self._cgroups is not None
        limits = pod_resources(record.config.resources, record.config.overhead)
        try:
            # A pod has no spec of its own: its cgroup gets its limits as a container's
            # linux.resources would hold them on this node (the same translation).
            self._cgroups.create(record.cgroup, self._cgroups.linux_resources(limits, record.id))
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ERANGE, errno.EBUSY):
                raise InvalidArgument(f"pod cgroup {record.cgroup}: {e.strerror}") from None
            raise

    def _make_parent(self, record: SandboxRecord) -> str:
        """The systemd driver makes the slice `cgroup_parent` names when there is none, with
        the pod's limits as `_create_pod_cgroup` gives them; "" when it exists (kubelet's)."""
        assert self._cgroups is not None
        limits = pod_resources(record.config.resources, record.config.overhead)
        resources = self._cgroups.linux_resources(limits, record.id)
        try:
            return self._cgroups.make_parent(record.config.cgroup_parent, resources, record.id)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ERANGE, errno.EBUSY):
                raise InvalidArgument(
                    f"pod cgroup parent {record.config.cgroup_parent}: {e.strerror}"
                ) from None
            raise

    def _release_parent(self, record: SandboxRecord) -> None:
        if not record.made_parent or self._cgroups is None:
            return
        try:
            self._cgroups.release_parent(record.made_parent, record.id)
        except (OSError, CriError) as e:
            log.error("cannot remove a pod parent", cgroup=record.made_parent, error=str(e))

    def _remove_pod_cgroup(self, record: SandboxRecord) -> None:
        if not record.cgroup or self._cgroups is None:
            return
        try:
            self._cgroups.remove(record.cgroup)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.error("cannot remove a pod cgroup", cgroup=record.cgroup, error=str(e))

    def _join_shim_cgroup(self, *pids: int) -> None:
        if self._cgroups is None or not self._cgroup_config.shim_cgroup:
            return
        for pid in pids:
            if pid:
                self._cgroups.join_shim_cgroup(self._cgroup_config.shim_cgroup, pid)

    # --- life of the service --------------------------------------------------------------

    def recover(self) -> None:
        """Rebuilds the index from the store and the live shims; rolls back half-built pods."""
        # What a crash left in the trash goes first, on the trash's thread.
        self._store.trash.sweep()
        self._bundle_trash.sweep()
        records = self._store.load_all()
        if self._cgroups is not None:
            # Every user of a parent cri-py made first, so that a rollback below does not
            # take it away from a pod that shares it.
            for record in records:
                if record.made_parent:
                    self._cgroups.adopt_parent(record.made_parent, record.id)
        for record in records:
            if record.phase == Phase.CREATING:
                log.warning("rolling back a sandbox left half-built", sandbox=record.id)
                try:
                    self._release(record)
                except Exception:
                    log.error("rollback failed", exc_info=True, sandbox=record.id)
                    continue
                self._remove_pod_cgroup(record)
                self._release_parent(record)
                self._bundle_trash.discard(self._bundle(record.id))
                self._store.delete(record.id)
                continue
            self._registry.restore(record)
            if record.runtime_handler not in self.handlers.names():
                # Its containers are refused until the handler is configured again.
                log.warning(
                    "sandbox's runtime handler no longer configured",
                    sandbox=record.id,
                    handler=record.runtime_handler,
                )
            if record.phase != Phase.CREATED or record.shim is None:
                continue
            if self._watcher.watch(record.id, shim_process(record.shim)):
                self._alive.add(record.id)
                self._reopen_hostports(record)
                try:
                    ShimClient(self._bundle(record.id)).ping(timeout=2.0)
                except ShimError as e:
                    log.warning("live shim does not answer", sandbox=record.id, error=str(e))
            else:
                log.warning("shim died while the daemon was down", sandbox=record.id)
        # Addresses whose sandbox is gone or stopped (crash during remove or stop).
        for owner in set(self._network.allocations.owned().values()):
            owner_record = self._registry.get(owner)
            if owner_record is None or owner_record.phase == Phase.STOPPED:
                log.info("releasing an address left allocated", sandbox=owner)
                self._network.teardown(BUILTIN, owner, self._store.dir_of(owner))
        log.info("sandboxes recovered", count=len(self._registry), ready=len(self._alive))

    def _reopen_hostports(self, record: SandboxRecord) -> None:
        if self._hostports and record.network == BUILTIN and record.ip:
            try:
                self._hostports.open(record.id, record.ip, record.config.port_mappings)
            except CriError as e:
                log.error("hostPorts not reopened", sandbox=record.id, error=str(e))

    def start_template(self) -> None:
        """Starts the shim template now rather than on the first RunPodSandbox."""
        try:
            self._template.start()
        except ShimError as e:
            log.warning("shim template not started; retried at the next pod", error=str(e))

    def _template_started(self, pid: int) -> None:
        self._join_shim_cgroup(pid)
        log.info("shim template ready", pid=pid)

    def close(self) -> None:
        self._watcher.close()
        self._template.close()
        # A clean stop leaves no trash (bounded: the next start deletes what is left).
        self._bundle_trash.close()
        self._store.trash.close()
