"""Container lifecycle events (GetContainerEvents): what happened, and a hub that fans each
event out to every subscriber.

Publishers are the container and sandbox services, on worker threads or the shim-event thread;
they must never wait for a subscriber. Each subscriber has a bounded queue: when it is full the
oldest event goes (every event carries the pod's whole status, so the newest matter most) and
one warning is logged per burst of drops, not one per event. Turning events into protobuf is
the server's job; this module knows no gRPC.
"""

from __future__ import annotations

import collections
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cri_py.log import get_logger
from cri_py.model.container import ContainerRecord
from cri_py.model.sandbox import SandboxView

log = get_logger("cri_py.events")

# kubelet's own event channel holds 1000; a subscriber further behind than that has lost
# track anyway (kubelet relists when its stream breaks).
DEFAULT_CAPACITY = 1000


class EventType(enum.IntEnum):
    """CRI's ContainerEventType values (the numbers are the proto's)."""

    CREATED = 0
    STARTED = 1
    STOPPED = 2
    DELETED = 3


@dataclass(frozen=True)
class ContainerEvent:
    """One change, with the pod as it was right after it: `sandbox` and `containers` (every
    container of the pod, not only the one that changed), as containerd sends them (kubelet
    v1.37 relists the pod on STOPPED; older kubelets built the pod's status from these). A
    sandbox's own events carry its ID as `container_id`."""

    type: EventType
    container_id: str
    created_at: int  # ns since the epoch
    sandbox: SandboxView | None  # None: the sandbox was already gone
    containers: tuple[ContainerRecord, ...]


class Subscription:
    """One subscriber's queue. `wake` is called (from the publishing thread) whenever an
    event arrives or the subscription ends; the subscriber then calls `drain`."""

    def __init__(self, hub: EventHub, name: str, capacity: int, wake: Callable[[], None]) -> None:
        self.name = name
        self._hub = hub
        self._wake = wake
        self._lock = threading.Lock()
        self._queue: collections.deque[ContainerEvent] = collections.deque(maxlen=capacity)
        self._closed = False
        self._dropping = False  # inside a burst of drops (warned once)
        self.dropped = 0  # over the subscription's life

    def _offer(self, event: ContainerEvent) -> None:
        warn = False
        with self._lock:
            if self._closed:
                return
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
                warn = not self._dropping
                self._dropping = True
            self._queue.append(event)  # a full deque drops its oldest
        if warn:
            log.warning(
                "event subscriber is too slow; dropping its oldest events",
                subscriber=self.name,
                capacity=self._queue.maxlen,
            )
        self._wake()

    def drain(self) -> tuple[list[ContainerEvent], bool]:
        """The queued events, oldest first, and whether the subscription has ended (the
        events returned with it are still to be delivered)."""
        with self._lock:
            events = list(self._queue)
            self._queue.clear()
            if self._dropping:
                self._dropping = False
                log.info("event subscriber caught up", subscriber=self.name, dropped=self.dropped)
            return events, self._closed

    def _end(self) -> None:
        with self._lock:
            self._closed = True
        self._wake()

    def close(self) -> None:
        """Unsubscribes; events published from now on are not queued."""
        self._hub._remove(self)
        self._end()


class EventHub:
    """Fans events out to subscribers; thread-safe, never blocks a publisher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self._closed = False
        self._count = 0

    def subscribe(self, wake: Callable[[], None], capacity: int = DEFAULT_CAPACITY) -> Subscription:
        with self._lock:
            self._count += 1
            subscription = Subscription(self, f"#{self._count}", capacity, wake)
            if self._closed:
                subscription._end()
            else:
                self._subscribers.append(subscription)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event: ContainerEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription._offer(event)

    def close(self) -> None:
        """Ends every subscription (the daemon is stopping): streams finish what they hold
        and end cleanly; later subscriptions end at once."""
        with self._lock:
            self._closed = True
            subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription._end()
