"""What happens to containers when their pod's shim goes, and after a daemon restart.

The sandbox service's hooks: before a pod's shim stops its containers are killed, after it
their ends are read from the exit files it left, and RemovePodSandbox removes them. Recovery
rebuilds the registry from the store, the exit files and the live shims, completing records a
shim got further than, rolling back creates that never reached one, finishing the cleanups of
removals a crash interrupted, and releasing layer leases nobody holds.
"""

from __future__ import annotations

import dataclasses
import signal
import time

from cri_py.images.service import ImageService
from cri_py.log import get_logger
from cri_py.model.container import ContainerFilter, ContainerRecord, ContainerState, ExitRecord
from cri_py.model.sandbox import SandboxState
from cri_py.runtime.container_lifecycle import ContainerLifecycle
from cri_py.runtime.container_removal import Removals
from cri_py.runtime.container_resources import ContainerResources
from cri_py.runtime.container_rules import container_user
from cri_py.runtime.container_table import UNKNOWN_EXIT_CODE, ContainerTable
from cri_py.shim import messages
from cri_py.shim.client import ShimError

log = get_logger("cri_py.containers")

SANDBOX_STOP_WAIT_SECONDS = 2.0


class ContainerRecovery:
    def __init__(
        self,
        table: ContainerTable,
        lifecycle: ContainerLifecycle,
        resources: ContainerResources,
        removals: Removals,
        images: ImageService,
    ) -> None:
        self._table = table
        self._lifecycle = lifecycle
        self._resources = resources
        self._removals = removals
        self._images = images

    # --- the sandbox service's hooks ------------------------------------------------------

    def stop_sandbox_containers(self, sandbox_id: str) -> None:
        """Before a pod's shim goes: every running container gets SIGKILL at once (kubelet
        has stopped them gracefully already) and we wait, bounded, for their exits. Those not
        seen by then are recorded by the shim as it shuts down, and read back from their exit
        files when its event connection closes. Removed containers' cleanups still talking
        to the shim go first."""
        self._removals.wait_shim(sandbox_id)
        running = [
            r
            for r in self._table.list(ContainerFilter(sandbox_id=sandbox_id))
            if r.sandbox_id == sandbox_id and r.state == ContainerState.RUNNING
        ]
        shim = self._table.shim(sandbox_id)
        for record in running:
            try:
                shim.kill(record.id, signal.SIGKILL)
            except ShimError as e:
                log.warning("cannot kill a container", container=record.id, error=str(e))
        deadline = time.monotonic() + SANDBOX_STOP_WAIT_SECONDS
        for record in running:
            self._table.wait_exit(record.id, max(0.0, deadline - time.monotonic()))

    def sandbox_stopped(self, sandbox_id: str) -> None:
        """After a pod's shim is gone: its containers' ends, from the exit files it left."""
        self._table.shim_events.unsubscribe(sandbox_id)
        self._table.on_shim_lost(sandbox_id)

    def remove_sandbox_containers(self, sandbox_id: str) -> None:
        """Called from a worker thread by RemovePodSandbox, before the pod's cgroup goes:
        its containers' cgroups go first, those of containers removed already included."""
        for record in self._table.list(ContainerFilter(sandbox_id=sandbox_id)):
            if record.sandbox_id != sandbox_id:
                continue
            self._lifecycle.remove_now(record.id)
            self._removals.release_layers_now(record.id)
        self._removals.wait_pod(sandbox_id)

    # --- after a daemon restart ----------------------------------------------------------

    def recover(self) -> None:
        """Rebuilds the index from the store, the exit files and the live shims."""
        registry = self._table.registry
        # Containers removed just before a crash: their cleanup is finished first, so that
        # their leases are no longer there to be found below.
        self._removals.finish_left()
        for record in self._table.store.load_all():
            exit = self._table.store.read_exit(record.id)
            if exit is not None:
                record = dataclasses.replace(record, state=ContainerState.EXITED, exit=exit)
            registry.restore(record)
        sandboxes = {r.sandbox_id for r in registry.records() if r.exit is None}
        for sandbox_id in sandboxes:
            known: dict[str, messages.ContainerView] = {}
            try:
                if self._table.sandboxes.status(sandbox_id).state == SandboxState.READY:
                    answer = self._table.shim_events.subscribe(
                        sandbox_id, self._table.sandboxes.shim_bundle(sandbox_id)
                    )
                    known = {c.id: c for c in answer.containers}
            except Exception as e:
                log.warning("cannot reach a sandbox's shim", sandbox=sandbox_id, error=str(e))
            for record in registry.records():
                if record.sandbox_id != sandbox_id or record.exit is not None:
                    continue
                view = known.get(record.id)
                if view is not None:
                    self._complete_recovered(record, view)
                elif record.pid == 0:
                    self._roll_back_create(record)
                else:
                    self._on_shim_lost_one(record)
        # Leases of containers with no record: the daemon died between leasing the layers and
        # saving the record, or between deleting the record and releasing them.
        for owner in self._images.lease_owners() - {r.id for r in registry.records()}:
            log.warning("releasing layers leased to a container that does not exist", owner=owner)
            self._release_layers_now(owner)
        log.info("containers recovered", count=len(registry))

    def _complete_recovered(self, record: ContainerRecord, view: messages.ContainerView) -> None:
        """A container the shim knows whose record lags behind it (the daemon died between
        the shim's answer and saving it): the record takes the shim's PID and start."""
        changed = record
        if not record.pid and view.pid:
            changed = dataclasses.replace(changed, pid=view.pid, user=container_user(view))
        if record.state == ContainerState.CREATED and view.started_at:
            changed = dataclasses.replace(
                changed, state=ContainerState.RUNNING, started_at=view.started_at
            )
        if changed != record:
            log.warning("completing a container's record from its shim", container=record.id)
            self._table.store.save(changed)
            self._table.registry.put(changed)

    def _roll_back_create(self, record: ContainerRecord) -> None:
        """A create the daemon died in before the shim made the process: nothing runs, so
        it is undone (the client's retry then creates it afresh under the same name)."""
        log.warning("rolling back a container left half-created", container=record.id)
        self._resources.remove(record.id, record.cgroup)
        self._table.store.delete(record.id)
        self._table.registry.forget(record.id)
        self._release_layers_now(record.id)

    def _release_layers_now(self, owner: str) -> None:
        try:
            self._removals.release_layers_now(owner)
        except Exception as e:
            log.error("leased layers not released", owner=owner, error=str(e))

    def _on_shim_lost_one(self, record: ContainerRecord) -> None:
        exit = self._table.store.read_exit(record.id) or ExitRecord(
            UNKNOWN_EXIT_CODE, time.time_ns(), "Unknown", "the pod's shim no longer knows it"
        )
        self._table.mark_exited(record.id, exit)
