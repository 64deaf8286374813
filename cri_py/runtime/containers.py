"""Containers: the one entry point the server and the streaming server use, composing the
collaborators that each do one kind of work over a shared `ContainerTable`:

- `container_table.py`: records (a `Registry`), names, per-ID locks, exits, events;
- `container_lifecycle.py`: create, start, stop, remove;
- `container_removal.py`: what a removal undoes, after the answer for an exited container;
- `container_io.py`: exec, attach, terminals, closing stdin, reopening the log;
- `container_resources.py`: the cgroup, its device rules, UpdateContainerResources;
- `container_stats.py`: container and pod usage;
- `container_recovery.py`: the sandbox service's hooks and recovery after a restart;
- `container_rules.py`: validation and the host reads a create needs (no state).

Queries are answered from memory; commands block (the shim's socket, the disk) and run on
worker threads.
"""

from __future__ import annotations

import asyncio
import builtins
from pathlib import Path
from typing import Any

from cri_py.cdi.registry import CdiRegistry
from cri_py.config import Config
from cri_py.images.service import ImageService
from cri_py.model.container import ContainerConfig, ContainerFilter, ContainerRecord
from cri_py.model.resources import Resources
from cri_py.model.sandbox import SandboxFilter, SandboxView
from cri_py.runtime.cgroups import CgroupManager
from cri_py.runtime.container_io import ContainerIO
from cri_py.runtime.container_lifecycle import ContainerLifecycle
from cri_py.runtime.container_recovery import ContainerRecovery
from cri_py.runtime.container_removal import Removals
from cri_py.runtime.container_resources import ContainerResources
from cri_py.runtime.container_stats import ContainerStats, ContainerUsage, SandboxUsage
from cri_py.runtime.container_table import ContainerTable
from cri_py.runtime.events import EventHub, EventType
from cri_py.runtime.sandboxes import SandboxService
from cri_py.runtime.stats_reader import UsageReader
from cri_py.store.containers import ContainerStore


class ContainerService:
    def __init__(
        self,
        config: Config,
        sandboxes: SandboxService,
        images: ImageService,
        loop: asyncio.AbstractEventLoop,
        cgroups: CgroupManager | None = None,
    ) -> None:
        usage = UsageReader(cgroups.fs) if cgroups is not None else None
        self.table = ContainerTable(ContainerStore(Path(config.root_dir) / "containers"), sandboxes)
        self.resources = ContainerResources(
            self.table, cgroups, usage, config.cgroups.default_parent
        )
        self.removals = Removals(self.table, self.resources, images, loop)
        self.lifecycle = ContainerLifecycle(
            self.table, self.resources, images, self.removals, CdiRegistry(config.cdi.spec_dirs)
        )
        self.io = ContainerIO(self.table)
        self.stats = ContainerStats(self.table, usage, config.root_dir)
        self.recovery = ContainerRecovery(
            self.table, self.lifecycle, self.resources, self.removals, images
        )
        # GetContainerEvents' source (the table publishes every container and sandbox change).
        self.events: EventHub = self.table.events

    # --- queries: memory only -------------------------------------------------------------

    def status(self, container_id: str) -> ContainerRecord:
        return self.table.status(container_id)

    def list(self, selector: ContainerFilter) -> builtins.list[ContainerRecord]:
        return self.table.list(selector)

    def list_generation(self) -> int:
        """Equal for two calls of `list` only if every record is the same."""
        return self.table.registry.generation

    def running(self, container_id: str) -> ContainerRecord:
        """The container's record; FailedPrecondition unless it is running."""
        return self.table.running(container_id)

    def spec_of(self, container_id: str) -> dict[str, Any]:
        return self.table.spec_of(container_id)

    # --- lifecycle ------------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        return await self.lifecycle.create(sandbox_id, config)

    def start(self, container_id: str) -> None:
        self.lifecycle.start(container_id)

    def stop(self, container_id: str, timeout: int) -> None:
        """Stop signal, then SIGKILL after `timeout` seconds (0: at once). Idempotent."""
        self.lifecycle.stop(container_id, timeout)

    async def remove(self, container_id: str) -> None:
        await self.lifecycle.remove(container_id)

    # --- exec and I/O (also the streaming server's `Runtime`) ------------------------------

    def exec_sync(
        self, container_id: str, command: tuple[str, ...], timeout: int
    ) -> tuple[bytes, bytes, int]:
        return self.io.exec_sync(container_id, command, timeout)

    async def exec_stream(
        self, container_id: str, command: tuple[str, ...], tty: bool, stdio: builtins.list[int]
    ) -> int:
        return await self.io.exec_stream(container_id, command, tty, stdio)

    def open_terminal(self, container_id: str) -> tuple[int, int]:
        return self.io.open_terminal(container_id)

    async def attach_stream(self, container_id: str, outputs: dict[str, int], stdin: bool) -> int:
        return await self.io.attach_stream(container_id, outputs, stdin)

    async def close_stdin_once(self, container_id: str) -> bool:
        return await self.io.close_stdin_once(container_id)

    def reopen_log(self, container_id: str) -> None:
        self.io.reopen_log(container_id)

    # --- resources and usage --------------------------------------------------------------

    def update_resources(self, container_id: str, resources: Resources) -> None:
        """UpdateContainerResources; extensions (NRI) may change the resources first.
        Updates an extension asks for itself go to `self.resources.update` directly."""
        hooks = self.table.hooks
        resources = hooks.update_container(self.table.status(container_id), resources)
        self.resources.update(container_id, resources)
        hooks.post_update_container(self.table.status(container_id))

    def usage(self, record: ContainerRecord, detailed: bool = False) -> ContainerUsage:
        return self.stats.usage(record, detailed)

    def list_usage(
        self, selector: ContainerFilter, detailed: bool = False
    ) -> builtins.list[ContainerUsage]:
        return self.stats.list_usage(selector, detailed)

    def sandbox_usage(
        self, selector: SandboxFilter, detailed: bool = False
    ) -> builtins.list[SandboxUsage]:
        return self.stats.sandbox_usage(selector, detailed)

    # --- the sandbox service's hooks, and the life of the service ---------------------------

    def stop_sandbox_containers(self, sandbox_id: str) -> None:
        self.recovery.stop_sandbox_containers(sandbox_id)

    def sandbox_shim_started(self, sandbox_id: str) -> None:
        self.table.ensure_subscribed(sandbox_id)

    def sandbox_stopped(self, sandbox_id: str) -> None:
        self.recovery.sandbox_stopped(sandbox_id)

    def remove_sandbox_containers(self, sandbox_id: str) -> None:
        self.recovery.remove_sandbox_containers(sandbox_id)

    def sandbox_event(self, kind: EventType, view: SandboxView) -> None:
        self.table.sandbox_event(kind, view)

    def recover(self) -> None:
        # What a crash left in the trash goes first, on the trash's thread.
        self.table.store.trash.sweep()
        self.recovery.recover()

    async def drain(self) -> None:
        """A clean stop, before `close`: the cleanups removals left after their answers."""
        await self.lifecycle.drain()

    def close(self) -> None:
        self.table.close()
        # A clean stop leaves no trash (bounded: the next start deletes what is left).
        self.table.store.trash.close()
