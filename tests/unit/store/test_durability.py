"""Durable and not-yet-durable writes of the stores (cri_py.store.atomic, records)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from cri_py.runtime.background import started
from cri_py.store.atomic import read_json, sync_files, write_json_atomic
from cri_py.store.records import RecordStore

ID = "a" * 64


@dataclasses.dataclass(frozen=True)
class Thing:
    id: str
    value: int


def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_a_write_that_is_not_durable_is_still_atomic_and_skips_the_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = fsyncs(monkeypatch)
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1}, durable=False)
    assert read_json(path) == {"a": 1} and synced == []
    write_json_atomic(path, {"a": 2})
    assert read_json(path) == {"a": 2} and len(synced) == 2  # the file, then its directory
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left


def test_a_durable_save_also_syncs_the_objects_directory_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RecordStore(tmp_path / "things", Thing, "thing")
    synced = fsyncs(monkeypatch)
    store.save(Thing(ID, 1), durable=False)
    assert synced == []
    store.save(Thing(ID, 2))
    assert len(synced) == 3  # record, its directory, the store's root
    assert store.load_all() == [Thing(ID, 2)]


def test_an_empty_record_is_a_first_write_lost_with_the_power(tmp_path: Path) -> None:
    # What a power loss can leave of a record that was never durable: nothing of the object
    # runs after it, so its directory goes, as one whose record was never written.
    store = RecordStore(tmp_path / "things", Thing, "thing")
    store.save(Thing(ID, 1), durable=False)
    (store.dir_of(ID) / "thing.json").write_bytes(b"")
    (store.dir_of(ID) / "config.json").write_text("{}")
    assert store.load_all() == []
    assert not store.dir_of(ID).exists()


def test_a_background_sync_reports_its_failure_when_waited_for(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    started(sync_files, tmp_path / "f").result()
    with pytest.raises(FileNotFoundError):
        started(sync_files, tmp_path / "missing").result()
