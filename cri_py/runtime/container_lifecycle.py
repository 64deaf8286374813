"""A container's lifecycle: CreateContainer, StartContainer, StopContainer, RemoveContainer.

Create gathers what the pure spec builder may not read itself, writes the bundle, makes the
cgroup (`container_resources.py`) and has the pod's shim fork the container's init, blocked
before execve; start lets it go. Every step registers its undo, so a failed create leaves
nothing behind. Records and exits are the table's (`container_table.py`); what a removal
undoes, and the cleanup after the answer of an exited container's, `container_removal.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

from cri_py.cdi.edits import apply_injection
from cri_py.cdi.registry import CdiRegistry
from cri_py.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound
from cri_py.images.service import ImageRootfs, ImageService
from cri_py.linux import features
from cri_py.log import get_logger
from cri_py.model.container import ContainerConfig, ContainerRecord, ContainerState, ExitRecord
from cri_py.model.sandbox import NamespaceMode, SandboxState
from cri_py.runtime import handlers, oom
from cri_py.runtime.background import settled, started
from cri_py.runtime.container_hooks import (
    check_hooks,
    create_call_seconds,
    read_hooks,
    start_call_seconds,
)
from cri_py.runtime.container_removal import KILL_WAIT_SECONDS, Removals
from cri_py.runtime.container_resources import ContainerResources
from cri_py.runtime.container_rules import (
    check_image_sub_paths,
    container_user,
    image_name,
    read_seccomp_localhost,
    resolve_devices,
    resolve_host_paths,
    stop_signal_number,
    validate_config,
)
from cri_py.runtime.container_table import ContainerTable
from cri_py.runtime.events import EventType
from cri_py.runtime.propagation import check_host_propagation
from cri_py.shim import messages
from cri_py.shim.client import CALL_TIMEOUT_SECONDS, CREATE_TIMEOUT_SECONDS, ShimError
from cri_py.shim.protocol import HOOKS_VERSION
from cri_py.spec.build import SpecInputs, build_spec
from cri_py.spec.devices import devices_unconfined
from cri_py.spec.mounts import PodFiles
from cri_py.spec.rootfs import overlay_mount
from cri_py.store.atomic import sync_files, write_json_atomic

log = get_logger("cri_py.containers")

START_ERROR_EXIT_CODE = 128
# How long a clean stop waits for the image leases of removed containers to be released.
RELEASE_DRAIN_SECONDS = 10.0


class ContainerLifecycle:
    def __init__(
        self,
        table: ContainerTable,
        resources: ContainerResources,
        images: ImageService,
        removals: Removals,
        cdi: CdiRegistry | None = None,
    ) -> None:
        # The node's CDI specs (none: CDI devices are refused as unknown).
        self._cdi = cdi or CdiRegistry(())
        self._table = table
        self._registry = table.registry
        self._store = table.store
        self._sandboxes = table.sandboxes
        self._resources = resources
        self._images = images
        self.removals = removals
        # Lease releases still running after their RemoveContainer answered (kept referenced).
        self._releases: set[asyncio.Task[None]] = set()

    # --- create ---------------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        validate_config(config)
        sandbox = self._sandboxes.status(sandbox_id)
        if sandbox.state != SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is not ready")
        sandbox_id = sandbox.record.id
        key = (sandbox_id, config.metadata.name, config.metadata.attempt)
        container_id = secrets.token_hex(32)
        # The name is released again if the create fails.
        with self._registry.reserving(key, container_id):
            # The leases go to the disk while the container is prepared (_create waits for
            # them before the shim makes its process).
            written: list[Future[None]] = []
            try:
                rootfs, lease = await self._images.lease_soon(container_id, config.image)
                written.append(lease)
                volumes = await self._lease_image_volumes(container_id, config, written)
                await asyncio.to_thread(
                    self._create, container_id, sandbox_id, config, rootfs, volumes, written
                )
            except BaseException:
                await self._images.release_layers(container_id)
                raise
        return container_id

    async def _lease_image_volumes(
        self, container_id: str, config: ContainerConfig, written: list[Future[None]]
    ) -> dict[str, ImageRootfs]:
        """The layers of each image volume's image, leased under `<container ID>/...` (which
        `release_layers(container ID)` releases too); each lease's write joins `written`. The
        image must have been pulled."""
        volumes = {}
        for index, mount in enumerate(config.mounts):
            if not mount.image:
                continue
            try:
                volumes[mount.container_path], lease = await self._images.lease_soon(
                    f"{container_id}/image-volume/{index}", mount.image
                )
            except NotFound as e:
                raise NotFound(f"image volume at {mount.container_path}: {e}") from None
            written.append(lease)
        return volumes

    def _create(
        self,
        container_id: str,
        sandbox_id: str,
        config: ContainerConfig,
        rootfs: ImageRootfs,
        volumes: Mapping[str, ImageRootfs],
        leases_written: Sequence[Future[None]],
    ) -> None:
        sandbox = self._sandboxes.status(sandbox_id).record
        if volumes:
            check_image_sub_paths(config, volumes)
            config = dataclasses.replace(
                config,
                mounts=tuple(
                    dataclasses.replace(m, image_ref=volumes[m.container_path].image_id)
                    if m.image
                    else m
                    for m in config.mounts
                ),
            )
        directory = self._store.dir_of(container_id)
        files = self._sandboxes.files_dir(sandbox_id)
        host_network = sandbox.config.namespaces.network == NamespaceMode.NODE
        target_pid_path = ""
        if config.pid_mode == NamespaceMode.TARGET:
            target = self._table.status(config.target_id)
            if target.state != ContainerState.RUNNING or not target.pid:
                raise FailedPrecondition(f"target container {config.target_id} is not running")
            target_pid_path = f"/proc/{target.pid}/ns/pid"
        cgroup = self._resources.cgroup_path(sandbox, container_id)
        handler_name = sandbox.runtime_handler
        handler = self._sandboxes.handlers.of_pod(handler_name, sandbox_id)
        # What the spec is built from; the record keeps the request as it came.
        spec_config = handlers.container_config(handler, handler_name, config)
        cdi = self._cdi.inject(config)
        host_paths = resolve_host_paths(config)
        check_host_propagation(config.mounts, host_paths)
        inputs = SpecInputs(
            container_id=container_id,
            sandbox_id=sandbox_id,
            config=spec_config,
            sandbox=sandbox.config,
            image=rootfs.config,
            image_name=config.image,
            rootfs=str(directory / "rootfs"),
            hostname="" if host_network else sandbox.hostname,
            pod_namespaces=dict(sandbox.namespaces),
            files=PodFiles(
                hosts=str(files / "hosts"),
                hostname=str(files / "hostname"),
                resolv_conf=str(files / "resolv.conf"),
                shm=sandbox.shm_path,
            ),
            resolved_mounts=host_paths,
            target_pid_path=target_pid_path,
            seccomp_localhost=read_seccomp_localhost(spec_config),
            cgroups_path=cgroup,
            cgroup_support=self._resources.support_for(config.resources, container_id),
            image_volumes={
                path: tuple(str(p) for p in volume.layers) for path, volume in volumes.items()
            },
            empty_dir=str(directory / "empty"),
            devices=resolve_devices(
                config, host_devices=not handler.privileged_without_host_devices
            )
            + cdi.device_nodes,
            device_rules_problem=self._resources.device_rules_problem(),
            selinux_enabled=features.selinux_enabled(),
            default_capabilities=handler.default_capabilities,
            privileged_without_host_devices=handler.privileged_without_host_devices,
            pod_annotation_prefixes=handler.pod_annotations,
            container_annotation_prefixes=handler.container_annotations,
        )
        spec = build_spec(inputs)
        # CDI's env, mounts and additional groups (its device nodes were inputs above).
        apply_injection(spec, cdi)
        if cdi:
            log.info("CDI devices injected", container=container_id, devices=",".join(cdi.devices))
        nodev = devices_unconfined(config.privileged, inputs.device_rules_problem)
        if nodev:
            log.warning(
                "device rules not enforced: container without CAP_MKNOD, rootfs nodev",
                container=container_id,
                reason=inputs.device_rules_problem,
            )
        log_path = ""
        if sandbox.config.log_directory and config.log_path:
            log_path = os.path.join(sandbox.config.log_directory, config.log_path)
        stop_signal = config.stop_signal or rootfs.config.stop_signal
        stop_signal_number(stop_signal)  # refused now, not at stop time
        record = ContainerRecord(
            id=container_id,
            sandbox_id=sandbox_id,
            config=dataclasses.replace(config, stop_signal=stop_signal),
            created_at=time.time_ns(),
            image_id=rootfs.image_id,
            log_path=log_path,
            cgroup=cgroup,
            image_name=image_name(config, rootfs.image_id, rootfs.repo_tags),
        )
        # Extensions (NRI) see the container before anything of it exists and may adjust its
        # spec: the cgroup and the OOM score are then the adjusted spec's.
        spec = self._table.hooks.create_container(sandbox, record, spec)
        oci_hooks = check_hooks(spec)
        if spec.get("linux", {}).get("cgroupsPath", cgroup) != cgroup:
            cgroup = spec["linux"]["cgroupsPath"]
            record = dataclasses.replace(record, cgroup=cgroup)
        oom_score_adj = int(spec["process"].get("oomScoreAdj", config.oom_score_adj))
        with contextlib.ExitStack() as undo:
            undo.callback(self._table.hooks.undo_create_container, sandbox, record, spec)
            undo.callback(self._store.delete, container_id)
            # Not durable yet: the save after the shim's create is (a power loss takes the
            # container's processes with it, a crash of the daemon leaves the page cache).
            self._store.save(record, durable=False)
            cgroup_made: Future[None] | None = None
            if self._resources.enabled:
                # config.json's linux.resources, limits and device rules: what it says is set,
                # on a thread while the bundle is written (~1-3 ms of mkdirs in 9 v1
                # hierarchies). Undone once the thread is done with it.
                cgroup_made = started(self._resources.create, cgroup, spec["linux"]["resources"])
                undo.callback(self._resources.remove, container_id, cgroup)
                undo.callback(settled, cgroup_made)
            for name in ("upper", "work", "rootfs", "empty"):
                (directory / name).mkdir()
                # The overlay's root takes the upper dir's mode: it must not be the daemon's
                # umask (0700 would lock every non-root user out of the container's "/").
                (directory / name).chmod(0o755)
            write_json_atomic(directory / "config.json", spec, durable=False)
            mount = overlay_mount(
                [str(p) for p in rootfs.layers],
                str(directory / "upper"),
                str(directory / "work"),
                str(directory / "empty"),
                nodev=nodev,
            )
            request = messages.Create(
                id=container_id,
                bundle=str(directory),
                rootfs=(mount,),
                log_path=log_path,
                stdin=config.stdin,
                stdin_once=config.stdin_once,
                oom_score_adj=oom_score_adj,
            )
            if cgroup_made is not None:
                cgroup_made.result()
                request = self._resources.in_cgroup(request, cgroup)
            self._table.ensure_subscribed(sandbox_id)
            shim = self._table.shim(sandbox_id)
            if oci_hooks and shim.version() < HOOKS_VERSION:
                raise FailedPrecondition(
                    f"container {config.metadata.name}: it has OCI hooks, which the shim of pod "
                    f"{sandbox_id} (an older cri-py's) does not run; recreate the pod"
                )
            # A restart knows only the leases on disk: none may be missing once a process
            # runs on the layers.
            try:
                for lease in leases_written:
                    lease.result()
            except OSError as e:
                name = config.metadata.name
                raise Internal(f"container {name}: recording its image lease: {e}") from e
            # config.json goes to the disk while the shim creates.
            config_synced = started(sync_files, directory / "config.json")
            try:
                result = shim.create(
                    request, create_call_seconds(CREATE_TIMEOUT_SECONDS, oci_hooks)
                )
            except ShimError as e:
                if e.kind == "hook_failed":
                    raise FailedPrecondition(f"container {config.metadata.name}: {e}") from e
                if e.kind in ("invalid", "failed"):
                    raise InvalidArgument(f"container {config.metadata.name}: {e}") from e
                raise Internal(f"container {config.metadata.name}: {e}") from e
            undo.callback(self._forget_in_shim, sandbox_id, container_id)
            if result.oom_score_adj is not None:
                oom.clamps.note(oom_score_adj, result.oom_score_adj)
            record = dataclasses.replace(record, pid=result.pid, user=container_user(result))
            config_synced.result()
            self._store.save(record)  # durable: the bundle's directory entries with it
            self._registry.put(record)
            undo.pop_all()
        self._table.publish(EventType.CREATED, container_id, sandbox_id)
        self._table.hooks.post_create_container(record)
        log.info(
            "container created",
            container=container_id,
            sandbox=sandbox_id,
            name=config.metadata.name,
            pid=record.pid,
        )

    def _forget_in_shim(self, sandbox_id: str, container_id: str) -> None:
        """Undo of a shim create: its init waits on the sync socket; kill and forget it."""
        with contextlib.suppress(ShimError):
            self._table.kill_and_forget(sandbox_id, container_id, KILL_WAIT_SECONDS)

    # --- start / stop / remove --------------------------------------------------------------

    def start(self, container_id: str) -> None:
        with self._registry.operation_on(container_id) as record:
            full = record.id
            if record.state != ContainerState.CREATED:
                raise FailedPrecondition(
                    f"container {full} is {record.state.name}, only CREATED can be started"
                )
            self._table.hooks.start_container(record)
            oci_hooks, _ = read_hooks(self._store.dir_of(full))
            try:
                shim = self._table.shim(record.sandbox_id)
                result = shim.start(full, start_call_seconds(CALL_TIMEOUT_SECONDS, oci_hooks))
            except ShimError as e:
                if e.kind == "start_failed":
                    message = str(e).removeprefix("shim start: ")
                    exit = self._store.read_exit(full) or ExitRecord(
                        START_ERROR_EXIT_CODE, time.time_ns(), "StartError", message
                    )
                    self._registry.replace(dataclasses.replace(record, started_at=exit.finished_at))
                    self._table.mark_exited(full, exit)
                    raise FailedPrecondition(f"container {full} failed to start: {message}") from e
                raise Internal(f"starting container {full}: {e}") from e
            record = dataclasses.replace(
                record, state=ContainerState.RUNNING, started_at=result.started_at
            )
            # Not durable (no fsync, ~2 ms): after a power loss the container is dead either
            # way, and a restart reports it exited from its created record as from this one;
            # only the start time would be missing. A crash of the daemon finds it written.
            self._store.save(record, durable=False)
            started = record

            def keep_exit(current: ContainerRecord) -> ContainerRecord:
                # An exit event may have raced ahead of this answer: keep it.
                if current.exit is not None:
                    return dataclasses.replace(
                        started, state=ContainerState.EXITED, exit=current.exit
                    )
                return started

            changed = self._registry.update(full, keep_exit)
            if changed is not None:
                record = changed[1]
            self._table.publish(EventType.STARTED, full, record.sandbox_id)
            self._table.hooks.post_start_container(record)
            if record.exit is not None:
                # Its exit was published before this start: say it again, in order.
                self._table.publish(EventType.STOPPED, full, record.sandbox_id)
            log.info("container started", container=full)

    def stop(self, container_id: str, timeout: int) -> None:
        """Stop signal, then SIGKILL after `timeout` seconds (0: at once). Idempotent."""
        with self._registry.operation_if_any(container_id) as record:
            if record is None or record.state != ContainerState.RUNNING:
                return
            # A CRI timeout is an int64: beyond what a thread can wait (OverflowError).
            self._stop(record, min(timeout, threading.TIMEOUT_MAX))

    def _stop(self, record: ContainerRecord, timeout: float) -> None:
        shim = self._table.shim(record.sandbox_id)
        try:
            if timeout > 0:
                signum = stop_signal_number(record.config.stop_signal)
                shim.kill(record.id, signum)
                if self._table.wait_exit(record.id, timeout):
                    return
            shim.kill(record.id, signal.SIGKILL)
        except ShimError as e:
            if not self._table.shim_events.subscribed(record.sandbox_id):
                self._table.on_shim_lost(record.sandbox_id)
                return
            raise Internal(f"stopping container {record.id}: {e}") from e
        if not self._table.wait_exit(record.id, KILL_WAIT_SECONDS):
            raise DeadlineExceeded(f"container {record.id} did not exit after SIGKILL")

    async def remove(self, container_id: str) -> None:
        full = self._registry.resolve(container_id)
        if full is None or self._remove_exited(full):
            return
        await asyncio.to_thread(self.remove_now, full)
        # The image lease goes after the answer (its store write is durable, ~1.5 ms): nothing
        # waits for it. A daemon that dies first leaves a lease of a container that does not
        # exist, which recovery releases; image calls queue behind it on the store's lock.
        release = asyncio.create_task(self._release_layers(full))
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)

    def _remove_exited(self, container_id: str) -> bool:
        """RemoveContainer of an exited container (kubelet stops before it removes), on the
        event loop: what a client sees is done before the answer (the record gone, the name
        free, the dir out of the records, DELETED published), the rest after (`Removals`).
        False, having done nothing, when the container is not exited or another command holds
        it: the caller removes it on a thread, all before the answer."""
        with self._registry.operation_nowait(container_id) as (held, record):
            if not held:
                return False
            if record is None:
                return True  # removed meanwhile
            if record.state != ContainerState.EXITED:
                return False
            try:
                # One rename: a crash after the answer cannot bring the container back.
                bundle = self._store.begin_removal(container_id)
            except OSError as e:
                log.warning("container dir not moved", container=container_id, error=str(e))
                return False
            self._table.forget(container_id)
            self._table.publish(EventType.DELETED, container_id, record.sandbox_id)
            self.removals.defer(record, bundle)
        log.info("container removed", container=container_id)
        return True

    async def _release_layers(self, container_id: str) -> None:
        try:
            await self._images.release_layers(container_id)
        except Exception as e:
            log.error(
                "layers of a removed container not released", container=container_id, error=str(e)
            )

    async def drain(self) -> None:
        """A clean stop: waits (bounded) for the work removals left after their answers."""
        await asyncio.to_thread(self.removals.drain)
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=RELEASE_DRAIN_SECONDS)

    def remove_now(self, container_id: str) -> None:
        """Kills a running container, forgets it in the shim, deletes its dir, all before it
        returns. The log stays."""
        with self._registry.operation(container_id) as record:
            if record is None:
                return
            if record.state == ContainerState.RUNNING:
                self._stop(record, 0)
            self.removals.tear_down(
                self._registry.get(container_id) or record, self._store.dir_of(container_id)
            )
            self._store.delete(container_id)
            self._table.forget(container_id)
            self._table.publish(EventType.DELETED, container_id, record.sandbox_id)
            log.info("container removed", container=container_id)
