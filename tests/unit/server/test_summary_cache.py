from __future__ import annotations

import dataclasses

from cri_py.server.summary_cache import SummaryCache


@dataclasses.dataclass(frozen=True)
class Rec:
    id: str
    state: int


def make() -> tuple[SummaryCache[Rec, dict[str, object]], list[str]]:
    built: list[str] = []

    def build(r: Rec) -> dict[str, object]:
        built.append(r.id)
        return {"id": r.id, "state": r.state}

    return SummaryCache(build, lambda r: (r,)), built


def test_same_record_object_reuses_its_summary() -> None:
    cache, built = make()
    a, b = Rec("a", 1), Rec("b", 1)
    first = cache.summaries([("a", a), ("b", b)], complete=True)
    second = cache.summaries([("a", a), ("b", b)], complete=True)
    assert built == ["a", "b"]
    assert [m["id"] for m in second] == ["a", "b"]
    assert first[0] is second[0]


def test_a_replaced_record_is_summarised_anew_even_when_equal() -> None:
    cache, built = make()
    a = Rec("a", 1)
    cache.summaries([("a", a)], complete=True)
    changed = dataclasses.replace(a, state=2)
    assert cache.summaries([("a", changed)], complete=True) == [{"id": "a", "state": 2}]
    # Equal but another object: rebuilt too (identity, never a stale hit).
    cache.summaries([("a", Rec("a", 2))], complete=True)
    assert built == ["a", "a", "a"]


def test_removed_objects_leave_the_cache_on_a_complete_list_only() -> None:
    cache, built = make()
    a, b = Rec("a", 1), Rec("b", 1)
    cache.summaries([("a", a), ("b", b)], complete=True)
    cache.summaries([("a", a)], complete=False)  # a filtered list keeps b
    cache.summaries([("b", b)], complete=True)  # a is gone now
    assert built == ["a", "b"]
    cache.summaries([("a", a)], complete=True)
    assert built == ["a", "b", "a"]


def test_every_part_is_compared() -> None:
    built: list[str] = []
    cache: SummaryCache[tuple[Rec, int], str] = SummaryCache(
        lambda v: built.append(v[0].id) or f"{v[0].id}:{v[1]}", lambda v: v
    )
    r = Rec("p", 0)
    assert cache.summaries([("p", (r, 1))], complete=True) == ["p:1"]
    assert cache.summaries([("p", (r, 2))], complete=True) == ["p:2"]
    assert built == ["p", "p"]
