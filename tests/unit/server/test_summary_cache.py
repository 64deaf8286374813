from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

from cri_py.api import api_pb2 as pb
from cri_py.config import parse_layers
from cri_py.model.sandbox import (
    PodMetadata,
    SandboxConfig,
    SandboxFilter,
    SandboxRecord,
    SandboxState,
    SandboxView,
)
from cri_py.runtime.node import NodeState
from cri_py.runtime.sandboxes import SandboxService
from cri_py.server.guard import Serialized
from cri_py.server.runtime import RuntimeServicer
from cri_py.server.summary_cache import ReplyCache, SummaryCache


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


# --- the serialized List answers (ReplyCache) and how the servicer uses them ---


class PodLister:
    """The sandbox service as ListPodSandbox sees it: its views and their generation."""

    def __init__(self) -> None:
        self.views: list[SandboxView] = []
        self.generation = 0
        self.lists = 0

    def list(self, selector: SandboxFilter) -> list[SandboxView]:
        self.lists += 1
        return [v for v in self.views if not selector.id or v.record.id == selector.id]

    def list_generation(self) -> int:
        return self.generation

    def add(self, sandbox_id: str, state: SandboxState = SandboxState.READY) -> None:
        config = SandboxConfig(PodMetadata(sandbox_id, "uid-" + sandbox_id, "ns"))
        self.views.append(SandboxView(SandboxRecord(sandbox_id * 64, config, 1), state))
        self.generation += 1


def servicer(lister: PodLister, tmp_path: Path) -> RuntimeServicer:
    config = parse_layers([("test", {"root_dir": str(tmp_path)})])
    return RuntimeServicer(config, NodeState(tmp_path), cast(SandboxService, lister))


async def test_an_unchanged_pod_list_is_answered_with_the_bytes_sent_last_time(
    tmp_path: Path,
) -> None:
    lister = PodLister()
    lister.add("a")
    rpc = servicer(lister, tmp_path)
    context = cast(Any, None)
    first = await rpc.ListPodSandbox(pb.ListPodSandboxRequest(), context)
    assert isinstance(first, Serialized)
    assert [p.id for p in pb.ListPodSandboxResponse.FromString(first.data).items] == ["a" * 64]
    again = await rpc.ListPodSandbox(pb.ListPodSandboxRequest(), context)
    assert again is first and lister.lists == 1

    # Any change of the state listed: the next answer is built anew and shows it.
    lister.add("b", SandboxState.NOTREADY)
    changed = await rpc.ListPodSandbox(pb.ListPodSandboxRequest(), context)
    assert isinstance(changed, Serialized)
    listed = pb.ListPodSandboxResponse.FromString(changed.data).items
    assert [(p.id[0], p.state) for p in listed] == [
        ("a", pb.SANDBOX_READY),
        ("b", pb.SANDBOX_NOTREADY),
    ]

    # A filtered list is built each time (and is not what the unfiltered one answers).
    only_b = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(id="b" * 64))
    filtered = await rpc.ListPodSandbox(only_b, context)
    assert isinstance(filtered, pb.ListPodSandboxResponse) and len(filtered.items) == 1
    assert await rpc.ListPodSandbox(pb.ListPodSandboxRequest(), context) is changed


def test_the_reply_cache_builds_only_when_its_key_changes() -> None:
    built: list[int] = []

    def build() -> pb.VersionResponse:
        built.append(1)
        return pb.VersionResponse(version=str(len(built)))

    cache = ReplyCache()
    one = cache.reply((1, frozenset({"x"})), build)
    assert cache.reply((1, frozenset({"x"})), build) is one and len(built) == 1
    two = cache.reply((1, frozenset()), build)  # a pod's shim died: same records, new state
    assert pb.VersionResponse.FromString(two.data).version == "2"
