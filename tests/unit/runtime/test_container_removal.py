"""A container's removal (cri_py.runtime.container_removal) and RemoveContainer's answer for an
exited one (ContainerLifecycle.remove): what is done before the answer, what after it, in which
order, what a pod waits for, and what a failing step leaves (a log line, not a lost cleanup)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cri_py import log as log_module
from cri_py.errors import NotFound
from cri_py.model.container import (
    ContainerConfig,
    ContainerMetadata,
    ContainerRecord,
    ContainerState,
)
from cri_py.model.sandbox import SandboxState
from cri_py.runtime.container_lifecycle import ContainerLifecycle
from cri_py.runtime.container_removal import Removals
from cri_py.runtime.container_rules import name_key
from cri_py.runtime.container_table import ContainerTable
from cri_py.runtime.events import EventType
from cri_py.shim.client import ShimError
from cri_py.store.containers import ContainerStore

POD = "11" * 32
OTHER_POD = "22" * 32
WAIT = 10.0


def record(
    container_id: str, sandbox_id: str = POD, state: ContainerState = ContainerState.EXITED
) -> ContainerRecord:
    config = ContainerConfig(ContainerMetadata(f"c-{container_id[:4]}"), "busybox")
    return ContainerRecord(
        container_id, sandbox_id, config, 1, "sha256:x", state=state, cgroup=f"/t/{container_id}"
    )


@dataclass
class Steps:
    """What the fakes were asked to do, in order, and on which thread."""

    done: list[tuple[str, str]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, step: str, container_id: str) -> None:
        with self.lock:
            self.done.append((step, container_id))
            if step != "lease":  # the image service lives on the loop
                self.threads.add(threading.current_thread().name)

    def of(self, container_id: str) -> list[str]:
        with self.lock:
            return [step for step, cid in self.done if cid == container_id]


class FakeShim:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.fail = False

    def kill(self, container_id: str, signum: int) -> None:
        self.steps.note("kill", container_id)

    def remove(self, container_id: str) -> None:
        self.steps.note("shim", container_id)
        if self.fail:
            raise ShimError("shim at /x: remove: connection refused")


class FakeSandboxes:
    def __init__(self) -> None:
        self.states: dict[str, SandboxState] = {}

    def status(self, sandbox_id: str) -> Any:
        if sandbox_id not in self.states:
            raise NotFound(f"pod sandbox {sandbox_id} not found")
        return SimpleNamespace(state=self.states[sandbox_id])


class FakeResources:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.gate: dict[str, threading.Event] = {}  # a container's cgroup removal waits here
        self.fail: set[str] = set()

    def remove(self, container_id: str, cgroup: str) -> None:
        if container_id in self.gate:
            assert self.gate[container_id].wait(WAIT)
        self.steps.note("cgroup", container_id)
        if container_id in self.fail:
            raise RuntimeError("a bug in the cgroup code")


class FakeHooks:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    def remove_container(self, container: ContainerRecord) -> None:
        self.steps.note("extensions", container.id)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class FakeImages:
    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    async def release_layers(self, owner: str) -> None:
        self.steps.note("lease", owner)


@dataclass
class Lab:
    store: ContainerStore
    table: ContainerTable
    sandboxes: FakeSandboxes
    shim: FakeShim
    resources: FakeResources
    steps: Steps
    removals: Removals
    lifecycle: ContainerLifecycle

    def add(self, container: ContainerRecord) -> Path:
        """A container as CreateContainer leaves it: a record in the store and the registry."""
        self.store.save(container)
        (self.store.dir_of(container.id) / "config.json").write_text("{}")
        self.table.registry.restore(container)
        return self.store.dir_of(container.id)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    steps = Steps()
    store = ContainerStore(tmp_path / "containers")
    sandboxes = FakeSandboxes()
    sandboxes.states = {POD: SandboxState.READY, OTHER_POD: SandboxState.READY}
    table = ContainerTable(store, sandboxes)  # type: ignore[arg-type]
    shim = FakeShim(steps)
    table.shim = lambda sandbox_id: shim  # type: ignore[method-assign, assignment, return-value]
    table.hooks = FakeHooks(steps)  # type: ignore[assignment]
    resources = FakeResources(steps)
    images = FakeImages(steps)
    loop = asyncio.get_running_loop()
    removals = Removals(table, resources, images, loop)  # type: ignore[arg-type]
    lifecycle = ContainerLifecycle(table, resources, images, removals)  # type: ignore[arg-type]
    yield Lab(store, table, sandboxes, shim, resources, steps, removals, lifecycle)
    for gate in resources.gate.values():
        gate.set()
    store.trash.close()


async def drained(lab: Lab) -> None:
    assert await asyncio.to_thread(lab.removals.drain, WAIT)


async def test_removing_an_exited_container_answers_before_its_cleanup_which_follows_in_order(
    lab: Lab,
) -> None:
    container = record("a" * 64)
    directory = lab.add(container)
    lab.resources.gate[container.id] = threading.Event()  # the cleanup cannot finish yet
    events = lab.table.events.subscribe(lambda: None)

    await lab.lifecycle.remove(container.id[:8])

    # What a client sees is done: no record, the name free, DELETED, the dir out of the records.
    assert lab.table.registry.get(container.id) is None
    lab.table.registry.reserve(name_key(container), "b" * 64)
    [event] = events.drain()[0]
    assert (event.type, event.container_id) == (EventType.DELETED, container.id)
    assert not directory.exists()
    moved = lab.store.removing / container.id
    assert (moved / "container.json").exists()
    # A restart now would find the cleanup to finish, not the container.
    assert [r.id for r, _ in lab.store.removals()] == [container.id]
    assert lab.store.load_all() == []
    # The pod's shim may stop once the cleanup is done with it; its cgroup must wait.
    assert await asyncio.to_thread(lab.removals.wait_shim, POD, WAIT)
    assert lab.steps.of(container.id) == ["shim"]
    assert not lab.removals.wait_pod(POD, timeout=0.01)
    assert lab.removals.wait_pod(OTHER_POD, timeout=0.01)

    lab.resources.gate[container.id].set()
    await drained(lab)
    assert lab.steps.of(container.id) == ["shim", "cgroup", "extensions", "lease"]
    assert (
        threading.current_thread().name not in lab.steps.threads
    )  # none on the loop but the lease's
    assert lab.removals.wait_pod(POD, timeout=0.01)
    assert lab.store.trash.drain(WAIT)
    assert not moved.exists() and list(lab.store.removing.iterdir()) == []


async def test_a_container_another_command_holds_is_removed_on_a_thread_without_blocking_the_loop(
    lab: Lab,
) -> None:
    container = record("c" * 64)
    lab.add(container)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lab.table.registry.operation(container.id):
            held.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(WAIT)
    removing = asyncio.create_task(lab.lifecycle.remove(container.id))
    for _ in range(20):
        await asyncio.sleep(0)  # the loop keeps running while the removal waits for the lock
    assert not removing.done()
    assert lab.table.registry.get(container.id) is not None
    release.set()
    await asyncio.wait_for(removing, WAIT)
    holder.join()
    # The synchronous path: all done before the answer (the lease after it, as before).
    assert lab.table.registry.get(container.id) is None
    assert lab.steps.of(container.id)[:3] == ["shim", "cgroup", "extensions"]
    assert list(lab.store.removing.iterdir()) == []


async def test_a_created_container_is_killed_and_removed_before_the_answer(lab: Lab) -> None:
    container = record("d" * 64, state=ContainerState.CREATED)
    lab.add(container)
    lab.table.wait_exit = lambda container_id, timeout: True  # type: ignore[method-assign]
    await lab.lifecycle.remove(container.id)
    assert lab.steps.of(container.id)[:4] == ["kill", "shim", "cgroup", "extensions"]
    assert lab.table.registry.get(container.id) is None


async def test_a_failing_step_is_logged_with_the_container_and_the_rest_still_runs(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    log_module.setup("info", "logfmt")
    logging.getLogger("cri_py").propagate = True  # let caplog see the records
    broken, next_one = record("e" * 64), record("f" * 64)
    lab.add(broken)
    lab.add(next_one)
    lab.shim.fail = True
    lab.resources.fail.add(broken.id)
    with caplog.at_level(logging.ERROR, logger="cri_py.containers"):
        await lab.lifecycle.remove(broken.id)
        await lab.lifecycle.remove(next_one.id)
        await drained(lab)
    failed = [
        (r.fields["step"], bool(r.exc_info))  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "fields", {}).get("container") == broken.id
    ]
    # A shim's refusal is reported as such; an unexpected exception with its traceback.
    assert ("shim", False) in failed and ("cgroup", True) in failed
    assert lab.steps.of(broken.id) == ["shim", "cgroup", "extensions", "lease"]
    # The worker lived on: the next removal was cleaned up too.
    assert lab.steps.of(next_one.id) == ["shim", "cgroup", "extensions", "lease"]


async def test_the_shim_of_a_pod_that_is_not_ready_is_not_called(lab: Lab) -> None:
    stopped, gone = record("1" * 64, POD), record("2" * 64, OTHER_POD)
    lab.add(stopped)
    lab.add(gone)
    lab.sandboxes.states = {POD: SandboxState.NOTREADY}
    await lab.lifecycle.remove(stopped.id)
    await lab.lifecycle.remove(gone.id)
    await drained(lab)
    assert lab.steps.of(stopped.id) == ["cgroup", "extensions", "lease"]
    assert lab.steps.of(gone.id) == ["cgroup", "extensions", "lease"]


async def test_a_start_finishes_the_cleanups_a_crash_left(lab: Lab) -> None:
    left = record("3" * 64)
    lab.add(left)
    lab.store.begin_removal(left.id)  # the answer's rename, then the crash
    never_written = lab.store.removing / ("4" * 64)
    never_written.mkdir()  # a dir whose record was never written: only the dir goes
    fresh = Removals(lab.table, lab.resources, FakeImages(lab.steps), asyncio.get_running_loop())  # type: ignore[arg-type]
    assert await asyncio.to_thread(fresh.finish_left) == 1
    assert lab.steps.of(left.id) == ["shim", "cgroup", "extensions", "lease"]
    assert lab.store.trash.drain(WAIT)
    assert list(lab.store.removing.iterdir()) == []
