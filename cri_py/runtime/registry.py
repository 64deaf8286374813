"""The in-memory bookkeeping the sandbox and container services share: records by ID, unique
CRI names, one lock per ID for commands, and lookup by ID prefix (crictl passes short IDs).

It holds no I/O: saving records is the store's job, and what a record means is the service's.
Queries take one short lock over the whole table; commands on one object are serialised by
its per-ID lock (`operation`), so a slow command on one pod never blocks another.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

from cri_py.errors import AlreadyExists, InvalidArgument, NotFound


class Identified(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Identified)
K = TypeVar("K", bound=Hashable)


class Registry(Generic[R, K]):
    """Records of one kind (`kind` names it in errors: "container", "pod sandbox"), each
    holding the name `name_of(record)`; `conflict(name, holder)` is the AlreadyExists message
    for a name already taken by the record `holder`."""

    def __init__(
        self, kind: str, name_of: Callable[[R], K], conflict: Callable[[K, str], str]
    ) -> None:
        self.kind = kind
        self._name_of = name_of
        self._conflict = conflict
        self._lock = threading.Lock()
        self._records: dict[str, R] = {}
        # Counts every change of a record: equal generations, the same records.
        self._generation = 0
        self._names: dict[K, str] = {}
        self._op_locks: dict[str, threading.Lock] = {}

    # --- lookup -------------------------------------------------------------------------------

    def resolve(self, id_or_prefix: str) -> str | None:
        """The full ID for an ID or a unique prefix of one; None when nothing matches. An exact
        ID wins over longer IDs it prefixes; an ambiguous prefix is the client's error."""
        if not id_or_prefix:
            raise InvalidArgument(f"{self.kind} ID must not be empty")
        with self._lock:
            if id_or_prefix in self._records:
                return id_or_prefix
            found = [i for i in self._records if i.startswith(id_or_prefix)]
        if len(found) > 1:
            raise InvalidArgument(f"{self.kind} ID prefix {id_or_prefix!r} is ambiguous")
        return found[0] if found else None

    def find(self, id_or_prefix: str) -> R:
        """The record an ID or unique prefix names; NotFound (naming what was asked) if none."""
        full = self.resolve(id_or_prefix)
        with self._lock:
            record = self._records.get(full or "")
        if record is None:
            raise NotFound(f"{self.kind} {id_or_prefix} not found")
        return record

    def get(self, record_id: str) -> R | None:
        with self._lock:
            return self._records.get(record_id)

    @property
    def generation(self) -> int:
        return self._generation

    def records(self) -> list[R]:
        """A snapshot of every record."""
        with self._lock:
            return list(self._records.values())

    def select(self, predicate: Callable[[R], bool]) -> list[R]:
        """The records `predicate` accepts (called on a snapshot, without the lock)."""
        return [r for r in self.records() if predicate(r)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    # --- names --------------------------------------------------------------------------------

    def reserve(self, name: K, record_id: str) -> None:
        """Takes `name` for `record_id` (before the record exists: two concurrent creates of
        one name must not both start); AlreadyExists when another record holds it."""
        with self._lock:
            holder = self._names.get(name)
            if holder is not None:
                raise AlreadyExists(self._conflict(name, holder))
            self._names[name] = record_id

    @contextlib.contextmanager
    def reserving(self, name: K, record_id: str) -> Iterator[None]:
        """`reserve`, released again (with the ID's lock) if the block fails."""
        self.reserve(name, record_id)
        try:
            yield
        except BaseException:
            self._release(name, record_id)
            raise

    def _release(self, name: K, record_id: str) -> None:
        with self._lock:
            if self._names.get(name) == record_id:
                del self._names[name]
            self._op_locks.pop(record_id, None)

    # --- changes ------------------------------------------------------------------------------

    def put(self, record: R) -> None:
        """Adds or replaces a record (its name must have been reserved, or use `restore`)."""
        with self._lock:
            self._records[record.id] = record
            self._generation += 1

    def restore(self, record: R) -> None:
        """A record read back from the store at start: it takes its name without a check."""
        with self._lock:
            self._records[record.id] = record
            self._names[self._name_of(record)] = record.id
            self._generation += 1

    def replace(self, record: R) -> bool:
        """Replaces a record that is still there (False if it was removed meanwhile)."""
        with self._lock:
            if record.id not in self._records:
                return False
            self._records[record.id] = record
            self._generation += 1
            return True

    def update(self, record_id: str, change: Callable[[R], R | None]) -> tuple[R, R] | None:
        """Atomically replaces the record with `change(record)`, unless that is None. Returns
        (before, after), or None when there is no such record or nothing changed."""
        with self._lock:
            before = self._records.get(record_id)
            if before is None:
                return None
            after = change(before)
            if after is None:
                return None
            self._records[record_id] = after
            self._generation += 1
            return before, after

    def forget(self, record_id: str) -> R | None:
        """Drops the record, the name it holds and its lock; returns what was dropped."""
        with self._lock:
            record = self._records.pop(record_id, None)
            self._op_locks.pop(record_id, None)
            if record is not None:
                self._generation += 1
                name = self._name_of(record)
                if self._names.get(name) == record_id:
                    del self._names[name]
            return record

    # --- commands -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def operation(self, record_id: str) -> Iterator[R | None]:
        """Holds the ID's lock (one command at a time per object) and yields its record as it
        is once the lock is held: None when it was removed (or not added yet)."""
        with self._lock:
            lock = self._op_locks.setdefault(record_id, threading.Lock())
        with lock:
            with self._lock:
                record = self._records.get(record_id)
            yield record

    @contextlib.contextmanager
    def operation_nowait(self, record_id: str) -> Iterator[tuple[bool, R | None]]:
        """`operation` for a caller that must not wait (the event loop): yields (False, None)
        without the lock when another command holds it, else (True, the record or None)."""
        with self._lock:
            lock = self._op_locks.setdefault(record_id, threading.Lock())
        if not lock.acquire(blocking=False):
            yield False, None
            return
        try:
            with self._lock:
                record = self._records.get(record_id)
            yield True, record
        finally:
            lock.release()

    @contextlib.contextmanager
    def operation_on(self, id_or_prefix: str) -> Iterator[R]:
        """`operation` on what an ID or unique prefix names; NotFound when there is no such
        record, before or once the lock is held."""
        with self.operation_if_any(id_or_prefix) as record:
            if record is None:
                raise NotFound(f"{self.kind} {id_or_prefix} not found")
            yield record

    @contextlib.contextmanager
    def operation_if_any(self, id_or_prefix: str) -> Iterator[R | None]:
        """`operation_on` for the idempotent commands (stop, remove): None, not NotFound."""
        full = self.resolve(id_or_prefix)
        if full is None:
            yield None
            return
        with self.operation(full) as record:
            yield record
