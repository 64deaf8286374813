"""The event hub: fan-out to every subscriber, bounded queues that drop the oldest with one
warning per burst, unsubscribing, and the end of every stream when the hub closes."""

from __future__ import annotations

import logging
import threading

import pytest

from cri_py.runtime.events import ContainerEvent, EventHub, EventType


def event(n: int, kind: EventType = EventType.CREATED) -> ContainerEvent:
    return ContainerEvent(kind, f"c{n}", n, None, ())


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def ids(events: list[ContainerEvent]) -> list[str]:
    return [e.container_id for e in events]


def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = EventHub()
    wakes_a, wakes_b = Wakes(), Wakes()
    a, b = hub.subscribe(wakes_a), hub.subscribe(wakes_b)
    for n in range(3):
        hub.publish(event(n))
    assert ids(a.drain()[0]) == ids(b.drain()[0]) == ["c0", "c1", "c2"]
    assert (wakes_a.count, wakes_b.count) == (3, 3)
    assert a.drain() == ([], False)


def test_a_full_queue_drops_its_oldest_and_warns_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = EventHub()
    slow = hub.subscribe(Wakes(), capacity=2)
    fast = hub.subscribe(Wakes(), capacity=100)
    with caplog.at_level(logging.WARNING, logger="cri_py.events"):
        for n in range(5):
            hub.publish(event(n))
    assert ids(slow.drain()[0]) == ["c3", "c4"]  # the newest survive
    assert ids(fast.drain()[0]) == ["c0", "c1", "c2", "c3", "c4"]
    assert slow.dropped == 3
    warnings = [r for r in caplog.records if "too slow" in r.getMessage()]
    assert len(warnings) == 1
    # Caught up: the next burst warns again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cri_py.events"):
        for n in range(5, 8):
            hub.publish(event(n))
    assert len([r for r in caplog.records if "too slow" in r.getMessage()]) == 1
    assert slow.dropped == 4


def test_publishing_never_waits_for_a_subscriber_that_does_not_read() -> None:
    hub = EventHub()
    hub.subscribe(Wakes(), capacity=10)  # never drained
    done = threading.Event()

    def publish_many() -> None:
        for n in range(10_000):
            hub.publish(event(n))
        done.set()

    threading.Thread(target=publish_many).start()
    assert done.wait(10), "publishing blocked on a stalled subscriber"


def test_an_unsubscribed_queue_gets_nothing_more() -> None:
    hub = EventHub()
    a, b = hub.subscribe(Wakes()), hub.subscribe(Wakes())
    hub.publish(event(1))
    a.close()
    hub.publish(event(2))
    assert hub.subscribers == 1
    assert a.drain() == ([event(1)], True)
    assert ids(b.drain()[0]) == ["c1", "c2"]


def test_closing_the_hub_ends_every_stream_after_what_it_holds() -> None:
    hub = EventHub()
    wakes = Wakes()
    a = hub.subscribe(wakes)
    hub.publish(event(1, EventType.STOPPED))
    hub.close()
    assert wakes.count == 2  # the event, then the end
    assert a.drain() == ([event(1, EventType.STOPPED)], True)
    hub.publish(event(2))
    assert a.drain() == ([], True)
    late = hub.subscribe(Wakes())
    assert late.drain() == ([], True)


def test_event_types_are_the_cri_numbers() -> None:
    assert [int(t) for t in EventType] == [0, 1, 2, 3]
