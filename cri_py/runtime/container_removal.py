"""What removing a container undoes besides its record, and, for an exited container, doing
it after RemoveContainer's answer: the shim told to forget it, its cgroup removed, its poststop
hooks and the extensions' remove hook run, its dir deleted and its image lease released, by one
worker thread in the order the removals came. A step that fails is logged with the container's
ID and the next step runs.

The answer (`ContainerLifecycle.remove`) has already taken the container out of the registry
and moved its dir out of the records (`ContainerStore.begin_removal`): that dir is the marker a
start after a crash finds, and finishes (`finish_left`). A pod's shim stops once its removed
containers' calls to it are over (`wait_shim`), its cgroup goes once their cleanups are past
their cgroups (`wait_pod`); a clean stop drains them.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cri_py.errors import NotFound
from cri_py.images.service import ImageService
from cri_py.log import get_logger
from cri_py.model.container import ContainerRecord, ContainerState
from cri_py.model.sandbox import SandboxState
from cri_py.runtime.container_hooks import run_poststop
from cri_py.runtime.container_resources import ContainerResources
from cri_py.runtime.container_table import ContainerTable
from cri_py.shim.client import ShimError

log = get_logger("cri_py.containers")

# How long to wait for an exit after SIGKILL before giving up (a D-state process).
KILL_WAIT_SECONDS = 10.0
# How long a pod's stop or removal waits for its containers' cleanups (a hung shim answers a
# call within its own timeout), and a clean stop for every cleanup.
WAIT_SECONDS = 30.0
# How long the release of a removed container's image lease may take.
RELEASE_SECONDS = 60.0
# The stages of a cleanup a pod waits for.
SHIM, POD = "shim", "pod"


class Removals:
    """The teardown every removal shares, and the queue of cleanups after answers."""

    def __init__(
        self,
        table: ContainerTable,
        resources: ContainerResources,
        images: ImageService,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._table = table
        self._resources = resources
        self._images = images
        self._loop = loop
        self._changed = threading.Condition()
        self._queue: collections.deque[tuple[ContainerRecord, Path]] = collections.deque()
        self._busy = False  # the worker is cleaning up after a removal it took off the queue
        # Removals per pod whose cleanup has not yet gone past the pod's shim (SHIM) or past
        # everything of the pod: the container's cgroup above all (POD).
        self._pending: collections.Counter[tuple[str, str]] = collections.Counter()
        self._worker: threading.Thread | None = None

    # --- the steps ----------------------------------------------------------------------------

    def tear_down(self, record: ContainerRecord, bundle: Path) -> None:
        """Everything of a removed container but its dir and its lease, each step tried."""
        self._step("shim", record, self._forget_in_shim)
        self._tear_down_after_shim(record, bundle)

    def _tear_down_after_shim(self, record: ContainerRecord, bundle: Path) -> None:
        self._step("cgroup", record, lambda r: self._resources.remove(r.id, r.cgroup))
        # The OCI delete is done: poststop, before the bundle goes.
        self._step("poststop hooks", record, lambda r: run_poststop(r.id, bundle))
        self._step("extensions", record, self._table.hooks.remove_container)

    def _forget_in_shim(self, record: ContainerRecord) -> None:
        try:
            if self._table.sandboxes.status(record.sandbox_id).state != SandboxState.READY:
                return  # the pod's shim is gone, and what it knew with it
        except NotFound:
            return
        if record.state == ContainerState.CREATED:
            self._table.kill_and_forget(record.sandbox_id, record.id, KILL_WAIT_SECONDS)
        else:
            self._table.shim(record.sandbox_id).remove(record.id)

    def release_layers_now(self, owner: str) -> None:
        """The image layers leased to `owner`, released from a worker thread (the image
        service lives on the event loop)."""
        release = self._images.release_layers(owner)
        asyncio.run_coroutine_threadsafe(release, self._loop).result(timeout=RELEASE_SECONDS)

    @staticmethod
    def _step(name: str, record: ContainerRecord, step: Callable[[ContainerRecord], None]) -> None:
        try:
            step(record)
        except Exception as e:
            # A shim or the disk saying no is reported as such; anything else is a bug.
            log.error(
                "a step of a container's removal failed",
                container=record.id,
                step=name,
                error=str(e) or type(e).__name__,
                exc_info=not isinstance(e, (ShimError, OSError)),
            )

    def _finish(self, record: ContainerRecord, bundle: Path) -> None:
        """The cleanup after the answer (or after the crash that came between)."""
        try:
            self._step("shim", record, self._forget_in_shim)
        finally:
            self._passed(SHIM, record.sandbox_id)
        try:
            self._tear_down_after_shim(record, bundle)
            self._step("dir", record, lambda r: self._table.store.trash.discard(bundle))
        finally:
            self._passed(POD, record.sandbox_id)
        self._step("image lease", record, lambda r: self.release_layers_now(r.id))
        log.info("container cleaned up", container=record.id)

    def _expect(self, sandbox_id: str) -> None:
        """Called with the condition held."""
        self._pending[(sandbox_id, SHIM)] += 1
        self._pending[(sandbox_id, POD)] += 1

    def _passed(self, stage: str, sandbox_id: str) -> None:
        with self._changed:
            key = (sandbox_id, stage)
            self._pending[key] -= 1
            if self._pending[key] <= 0:
                del self._pending[key]
            self._changed.notify_all()

    # --- after the answer ---------------------------------------------------------------------

    def defer(self, record: ContainerRecord, bundle: Path) -> None:
        """Queues the cleanup of a container whose dir is now `bundle` (out of the records)."""
        with self._changed:
            self._queue.append((record, bundle))
            self._expect(record.sandbox_id)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name="cri-py-removals", daemon=True
                )
                self._worker.start()
            self._changed.notify_all()

    def finish_left(self) -> int:
        """At start, before serving: finishes the cleanups a crash left (how many). The
        extensions are not told: they connect later, and the container is not among those
        they are shown then."""
        left = self._table.store.removals()
        for record, bundle in left:
            log.warning(
                "finishing the removal of a container a crash interrupted", container=record.id
            )
            with self._changed:
                self._expect(record.sandbox_id)
            self._finish(record, bundle)
        return len(left)

    def wait_shim(self, sandbox_id: str, timeout: float = WAIT_SECONDS) -> bool:
        """Waits until the cleanups of the pod's removed containers are done with its shim
        (before it stops); False (logged) when `timeout` seconds passed first."""
        return self._wait_stage(SHIM, sandbox_id, timeout)

    def wait_pod(self, sandbox_id: str, timeout: float = WAIT_SECONDS) -> bool:
        """Waits until the cleanups of the pod's removed containers are done with everything
        of the pod (its cgroup can go); False (logged) when `timeout` seconds passed first."""
        return self._wait_stage(POD, sandbox_id, timeout)

    def _wait_stage(self, stage: str, sandbox_id: str, timeout: float) -> bool:
        if self._wait(lambda: not self._pending.get((sandbox_id, stage)), timeout):
            return True
        log.warning("removed containers' cleanups still running", sandbox=sandbox_id, stage=stage)
        return False

    def drain(self, timeout: float = WAIT_SECONDS) -> bool:
        """Waits until every cleanup queued so far is over; False (logged) on a timeout, and
        the next start finishes what is left."""
        if self._wait(lambda: not self._queue and not self._busy, timeout):
            return True
        log.warning("removed containers' cleanups not finished before stop", left=self.pending())
        return False

    def pending(self) -> int:
        with self._changed:
            return len(self._queue) + self._busy

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                record, bundle = self._queue.popleft()
                self._busy = True
            try:
                self._finish(record, bundle)
            except Exception:
                log.error("a container's cleanup failed", container=record.id, exc_info=True)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
