"""What every kind of container work shares: the registry of container records, their store,
the shim of each pod, exits as the shims report them, and event publication.

Lifecycle, exec and I/O, resources, stats and recovery (`container_*.py`) each take this
table; none keeps records of its own. Exits arrive as shim events (or, when a shim's
connection closes, from the exit files it left): the shim's exit file is the authority on
how a container ended.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from typing import Any

from cri_py.errors import FailedPrecondition, NotFound
from cri_py.log import get_logger
from cri_py.model.container import ContainerFilter, ContainerRecord, ContainerState, ExitRecord
from cri_py.model.sandbox import SandboxView
from cri_py.runtime.container_rules import NameKey, matches, name_conflict, name_key
from cri_py.runtime.events import ContainerEvent, EventHub, EventType
from cri_py.runtime.lifecycle_hooks import NO_HOOKS, LifecycleHooks
from cri_py.runtime.registry import Registry
from cri_py.runtime.sandboxes import SandboxService
from cri_py.shim import messages
from cri_py.shim.client import ShimClient
from cri_py.shim.events import ShimEvents
from cri_py.store.containers import ContainerStore

log = get_logger("cri_py.containers")

# containerd's exit code for a container whose end nobody saw (its shim died first).
UNKNOWN_EXIT_CODE = 255


class ContainerTable:
    def __init__(self, store: ContainerStore, sandboxes: SandboxService) -> None:
        self.store = store
        self.sandboxes = sandboxes
        self.registry: Registry[ContainerRecord, NameKey] = Registry(
            "container", name_key, name_conflict
        )
        # Set when a container's exit is known (waited on by stop and remove).
        self._exits_lock = threading.Lock()
        self._exits: dict[str, threading.Event] = {}
        self.shim_events = ShimEvents(self._on_event, self.on_shim_lost)
        # GetContainerEvents' source: every container (and, through the sandbox service's
        # hook, every sandbox) change is published here.
        self.events = EventHub()
        # Extensions (NRI) told of each container event; set by the daemon.
        self.hooks: LifecycleHooks = NO_HOOKS

    # --- queries: memory only -------------------------------------------------------------

    def status(self, container_id: str) -> ContainerRecord:
        return self.registry.find(container_id)

    def running(self, container_id: str) -> ContainerRecord:
        """The container's record; FailedPrecondition unless it is running."""
        record = self.status(container_id)
        if record.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running")
        return record

    def list(self, selector: ContainerFilter) -> list[ContainerRecord]:
        return self.registry.select(lambda r: matches(r, selector))

    def pod_records(self, sandbox_id: str) -> tuple[ContainerRecord, ...]:
        return tuple(self.registry.select(lambda r: r.sandbox_id == sandbox_id))

    def spec_of(self, container_id: str) -> dict[str, Any]:
        try:
            spec: dict[str, Any] = json.loads(
                (self.store.dir_of(container_id) / "config.json").read_text()
            )
        except (OSError, ValueError):
            return {}
        return spec

    # --- the pod's shim -------------------------------------------------------------------

    def shim(self, sandbox_id: str) -> ShimClient:
        return ShimClient(self.sandboxes.shim_bundle(sandbox_id))

    def kill_and_forget(self, sandbox_id: str, container_id: str, wait_seconds: float) -> None:
        """A created container the pod's shim knows, never started: its init waits on the
        sync socket, so it is killed, its exit awaited, then the shim forgets it."""
        shim = self.shim(sandbox_id)
        shim.kill(container_id, signal.SIGKILL)
        self.wait_exit(container_id, wait_seconds)
        shim.remove(container_id)

    def ensure_subscribed(self, sandbox_id: str) -> None:
        if not self.shim_events.subscribed(sandbox_id):
            self.shim_events.subscribe(sandbox_id, self.sandboxes.shim_bundle(sandbox_id))

    # --- events ---------------------------------------------------------------------------

    def publish(self, kind: EventType, container_id: str, sandbox_id: str) -> None:
        """A container event with its pod as it is now (the sandbox may be gone)."""
        if not self.events.subscribers:
            return
        try:
            sandbox: SandboxView | None = self.sandboxes.status(sandbox_id)
        except NotFound:
            sandbox = None
        self.events.publish(
            ContainerEvent(
                kind, container_id, time.time_ns(), sandbox, self.pod_records(sandbox_id)
            )
        )

    def sandbox_event(self, kind: EventType, view: SandboxView) -> None:
        """The sandbox service's hook: a sandbox's own event (its ID as the container's, as
        kubelet expects: a DELETED one for the sandbox drops the pod from its cache)."""
        if self.events.subscribers:
            self.events.publish(
                ContainerEvent(
                    kind, view.record.id, time.time_ns(), view, self.pod_records(view.record.id)
                )
            )

    # --- exits ----------------------------------------------------------------------------

    def mark_exited(self, container_id: str, exit: ExitRecord) -> None:
        """Records the first exit seen for a container (later ones change nothing), wakes
        whoever waits for it and publishes STOPPED."""

        def exited(record: ContainerRecord) -> ContainerRecord | None:
            if record.exit is not None:
                return None
            return dataclasses.replace(record, state=ContainerState.EXITED, exit=exit)

        changed = self.registry.update(container_id, exited)
        if changed is None:
            return
        record = changed[1]
        # Before the waiters wake: a stop or remove waiting for this exit is told after it.
        self.hooks.container_stopped(record)
        with self._exits_lock:
            event = self._exits.setdefault(container_id, threading.Event())
        event.set()
        log.info(
            "container exited", container=container_id, code=exit.exit_code, reason=exit.reason
        )
        self.publish(EventType.STOPPED, container_id, record.sandbox_id)

    def wait_exit(self, container_id: str, timeout: float) -> bool:
        """Whether the container has exited (or is gone) within `timeout` seconds."""
        record = self.registry.get(container_id)
        if record is None or record.exit is not None:
            return True
        with self._exits_lock:
            event = self._exits.setdefault(container_id, threading.Event())
        return event.wait(timeout)

    def forget(self, container_id: str) -> None:
        """Drops a removed container: its record, its name, its lock and its exit event."""
        self.registry.forget(container_id)
        with self._exits_lock:
            self._exits.pop(container_id, None)

    def _on_event(self, sandbox_id: str, event: messages.Exited) -> None:
        exit = event.exit
        self.mark_exited(
            event.id, ExitRecord(exit.exit_code, exit.finished_at, exit.reason, exit.message)
        )

    def on_shim_lost(self, sandbox_id: str) -> None:
        """The shim is gone: its containers ended, as its exit files say (or unseen)."""
        pending = [
            r.id for r in self.registry.select(lambda r: r.sandbox_id == sandbox_id and not r.exit)
        ]
        for container_id in pending:
            exit = self.store.read_exit(container_id) or ExitRecord(
                UNKNOWN_EXIT_CODE, time.time_ns(), "Unknown", "the pod's shim exited"
            )
            self.mark_exited(container_id, exit)

    def close(self) -> None:
        self.shim_events.close()
