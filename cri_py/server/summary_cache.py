"""The last protobuf summary built for each pod or container, reused while its source is the
same object.

kubelet lists every pod and container about once a second; building a message from a record
costs ~20-30 us in Python, so with 100 pods the building was most of ListContainers' time.
Records are frozen and replaced (never changed in place) when their state changes, so "the same
record object" means "the same summary". Sources are compared by identity (`is`): cheap, and
never a stale hit.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from google.protobuf.message import Message

from cri_py.server.guard import Serialized

S = TypeVar("S")  # the source: a record or a view
M = TypeVar("M")  # the message built from it


class SummaryCache(Generic[S, M]):
    def __init__(self, build: Callable[[S], M], parts: Callable[[S], tuple[object, ...]]) -> None:
        """`parts(source)`: the immutable objects the summary is built from (identity-checked);
        a record, or a view's record and state."""
        self._build = build
        self._parts = parts
        self._cache: dict[str, tuple[tuple[object, ...], M]] = {}

    def summaries(self, keyed: Iterable[tuple[str, S]], complete: bool) -> list[M]:
        """The summaries of `keyed` (ID, source) in order. `complete`: `keyed` is every live
        object (an unfiltered list), so entries of removed ones are dropped."""
        out: list[M] = []
        fresh: dict[str, tuple[tuple[object, ...], M]] = {}
        for key, source in keyed:
            parts = self._parts(source)
            hit = self._cache.get(key)
            if (
                hit is not None
                and len(hit[0]) == len(parts)
                and all(a is b for a, b in zip(hit[0], parts, strict=True))
            ):
                message = hit[1]
            else:
                message = self._build(source)
            fresh[key] = (parts, message)
            out.append(message)
        if complete:
            self._cache = fresh
        else:
            self._cache.update(fresh)
        return out


class ReplyCache:
    """The last unfiltered List answer, serialized, kept while the state it was built from is
    the same (`key`: the service's generation of what it lists).

    kubelet's relist asks for every pod and container each second and gets the same answer
    most of the time: the answer is then the bytes sent last time, without building a list,
    a response or its encoding again. The key is read before the answer is built, so a change
    made during the build only makes the next call build again."""

    def __init__(self) -> None:
        self._key: Hashable = None
        self._reply = Serialized(b"")

    def reply(self, key: Hashable, build: Callable[[], Message]) -> Serialized:
        if key != self._key:
            reply = Serialized(build().SerializeToString())
            self._key, self._reply = key, reply
        return self._reply
