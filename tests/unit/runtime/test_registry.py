"""The registry the sandbox and container services share: names, prefixes, locks, updates."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import pytest

from cri_py.errors import AlreadyExists, InvalidArgument, NotFound
from cri_py.runtime.registry import Registry


@dataclass(frozen=True)
class Item:
    id: str
    name: str
    count: int = 0


def registry() -> Registry[Item, str]:
    return Registry("widget", lambda r: r.name, lambda name, holder: f"{name} held by {holder}")


def added(reg: Registry[Item, str], *items: Item) -> Registry[Item, str]:
    for item in items:
        reg.reserve(item.name, item.id)
        reg.put(item)
    return reg


def test_concurrent_reservations_of_one_name_let_exactly_one_win() -> None:
    reg = registry()
    start = threading.Barrier(16)
    won: list[str] = []
    refused: list[str] = []

    def claim(record_id: str) -> None:
        start.wait()
        try:
            reg.reserve("web", record_id)
            won.append(record_id)
        except AlreadyExists as e:
            refused.append(str(e))

    threads = [threading.Thread(target=claim, args=(f"id{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert refused == [f"web held by {won[0]}"] * 15


def test_a_failed_create_releases_its_name_and_a_retry_gets_it() -> None:
    reg = registry()
    with pytest.raises(RuntimeError), reg.reserving("web", "first"):
        raise RuntimeError("create failed")
    with reg.reserving("web", "second"):
        reg.put(Item("second", "web"))
    assert reg.find("second").name == "web"
    with pytest.raises(AlreadyExists, match="web held by second"):
        reg.reserve("web", "third")


def test_a_successful_create_keeps_its_name() -> None:
    reg = registry()
    with reg.reserving("web", "a"):
        pass
    with pytest.raises(AlreadyExists):
        reg.reserve("web", "b")


def test_forget_releases_the_name_of_the_removed_record_only() -> None:
    reg = added(registry(), Item("aa", "web"), Item("bb", "db"))
    assert reg.forget("aa") == Item("aa", "web")
    assert reg.get("aa") is None
    reg.reserve("web", "cc")  # free again
    with pytest.raises(AlreadyExists):
        reg.reserve("db", "dd")  # still held by bb
    assert reg.forget("aa") is None


def test_prefixes_resolve_when_unique_and_are_refused_when_ambiguous() -> None:
    reg = added(registry(), Item("abc1", "x"), Item("abc2", "y"), Item("abd", "z"))
    assert reg.resolve("abd") == "abd"
    assert reg.resolve("abc1") == "abc1"
    assert reg.resolve("abd0") is None
    assert reg.find("abc2").name == "y"
    with pytest.raises(InvalidArgument, match="widget ID prefix 'abc' is ambiguous"):
        reg.resolve("abc")
    with pytest.raises(InvalidArgument, match="ambiguous"):
        reg.find("ab")
    with pytest.raises(InvalidArgument, match="widget ID must not be empty"):
        reg.resolve("")
    with pytest.raises(NotFound, match="widget zz not found"):
        reg.find("zz")


def test_an_exact_id_wins_over_longer_ids_it_prefixes() -> None:
    reg = added(registry(), Item("ab", "x"), Item("abcd", "y"))
    assert reg.resolve("ab") == "ab"


def test_restore_takes_the_name_without_a_check() -> None:
    reg = registry()
    reg.restore(Item("aa", "web"))
    assert len(reg) == 1
    with pytest.raises(AlreadyExists, match="web held by aa"):
        reg.reserve("web", "bb")


def test_select_filters_a_snapshot() -> None:
    reg = added(registry(), Item("a", "x", 1), Item("b", "y", 2), Item("c", "z", 3))
    assert [i.id for i in reg.select(lambda i: i.count >= 2)] == ["b", "c"]


def test_replace_does_not_bring_back_a_removed_record() -> None:
    reg = added(registry(), Item("a", "x"))
    assert reg.replace(Item("a", "x", 5))
    assert reg.find("a").count == 5
    reg.forget("a")
    assert not reg.replace(Item("a", "x", 6))
    assert reg.get("a") is None


def test_concurrent_updates_lose_no_change() -> None:
    reg = added(registry(), Item("a", "x"))

    def bump() -> None:
        for _ in range(500):
            reg.update("a", lambda item: replace(item, count=item.count + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.find("a").count == 2000


def test_update_can_decline_and_misses_unknown_ids() -> None:
    reg = added(registry(), Item("a", "x"))
    assert reg.update("a", lambda item: None) is None
    assert reg.update("zz", lambda item: item) is None
    assert reg.update("a", lambda item: replace(item, count=1)) == (
        Item("a", "x"),
        Item("a", "x", 1),
    )


def test_operations_on_one_id_run_one_at_a_time_and_see_the_latest_record() -> None:
    reg = added(registry(), Item("a", "x"))
    inside = threading.Event()
    seen: list[int] = []

    def first() -> None:
        with reg.operation("a") as record:
            assert record is not None
            inside.set()
            time.sleep(0.2)
            reg.put(replace(record, count=1))

    def second() -> None:
        inside.wait(5)
        with reg.operation("a") as record:
            assert record is not None
            seen.append(record.count)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [1]  # the second waited for the first, and saw its change


def test_an_operation_on_another_id_does_not_wait() -> None:
    reg = added(registry(), Item("a", "x"), Item("b", "y"))
    with reg.operation("a"):
        done = threading.Event()

        def other() -> None:
            with reg.operation("b") as record:
                assert record is not None
            done.set()

        thread = threading.Thread(target=other)
        thread.start()
        assert done.wait(5)
        thread.join()


def test_an_operation_on_a_removed_record_yields_none() -> None:
    reg = added(registry(), Item("a", "x"))
    reg.forget("a")
    with reg.operation("a") as record:
        assert record is None


def test_an_operation_on_a_prefix_holds_the_full_id_or_says_not_found() -> None:
    reg = added(registry(), Item("abc123", "a"))
    with reg.operation_on("abc") as record:
        assert record.id == "abc123"
    with pytest.raises(NotFound, match="widget nope not found"), reg.operation_on("nope"):
        pass
    with reg.operation_if_any("nope") as missing:
        assert missing is None
    reg.forget("abc123")
    with reg.operation_if_any("abc123") as gone:
        assert gone is None


def test_every_change_of_a_record_moves_the_generation_and_reads_do_not() -> None:
    # List answers are reused while the generation stays: a change it missed would be a
    # stale list.
    reg = added(registry(), Item("a1", "a"))
    seen = [reg.generation]

    def moved() -> bool:
        seen.append(reg.generation)
        return seen[-1] != seen[-2]

    reg.put(Item("a1", "a", 1))
    assert moved()
    assert reg.replace(Item("a1", "a", 2)) and moved()
    assert reg.update("a1", lambda r: replace(r, count=3)) is not None and moved()
    assert reg.update("a1", lambda r: None) is None and not moved()
    reg.restore(Item("b1", "b"))
    assert moved()
    assert reg.forget("b1") is not None and moved()
    assert reg.forget("b1") is None and not moved()
    reg.records()
    reg.get("a1")
    assert not moved()
