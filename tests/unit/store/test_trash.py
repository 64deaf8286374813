"""Deferred deletion (cri_py.store.trash) and the record stores' use of it (store.records)."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_py.store import trash as trash_module
from cri_py.store.records import RecordStore
from cri_py.store.trash import Trash, remove_tree

ID = "a" * 64
OTHER = "b" * 64
WAIT = 10.0


@dataclasses.dataclass(frozen=True)
class Thing:
    id: str
    value: int


def make_tree(path: Path) -> Path:
    (path / "upper" / "deep").mkdir(parents=True)
    (path / "upper" / "deep" / "file").write_text("x")
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def trash(tmp_path: Path) -> Iterator[Trash]:
    trash = Trash(tmp_path / "trash")
    yield trash
    trash.close(WAIT)


@pytest.fixture
def blocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, list[str]]]:
    """Deletes wait for the event; the names deleted, in order, with the deleting thread's."""
    release, deleted = threading.Event(), []
    real = trash_module.remove_tree

    def waiting(path: Path) -> None:
        assert release.wait(WAIT), "never released"
        deleted.append(f"{path.name} on {threading.current_thread().name}")
        real(path)

    monkeypatch.setattr(trash_module, "remove_tree", waiting)
    yield release, deleted
    release.set()


@pytest.fixture
def logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(logging.getLogger("cri_py"), "propagate", True)
    caplog.set_level(logging.INFO, logger="cri_py.store.trash")
    return caplog


def test_remove_tree_handles_read_only_dirs_files_and_missing(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "ro" / "deep").mkdir(parents=True)
    (tree / "ro" / "deep" / "f").write_text("x")
    os.chmod(tree / "ro" / "deep", 0)
    os.chmod(tree / "ro", 0o500)
    remove_tree(tree)
    assert not tree.exists()
    remove_tree(tree)
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_discard_moves_the_dir_at_once_and_deletes_it_on_the_worker(
    tmp_path: Path, trash: Trash, blocked: tuple[threading.Event, list[str]]
) -> None:
    release, deleted = blocked
    victim = make_tree(tmp_path / ID)
    trash.discard(victim)
    # Gone from its place before any delete ran (the worker is held).
    assert not victim.exists()
    (entry,) = trash.directory.iterdir()
    assert entry.name.startswith(f"{ID}-")
    assert (entry / "upper" / "deep" / "file").read_text() == "x"
    assert trash.pending() == 1
    assert not trash.drain(0.05)  # still held: drain says so
    release.set()
    assert trash.drain(WAIT)
    assert list(trash.directory.iterdir()) == []
    assert deleted == [f"{entry.name} on trash-trash"]


def test_worker_deletes_in_the_order_of_discards(
    tmp_path: Path, trash: Trash, blocked: tuple[threading.Event, list[str]]
) -> None:
    release, deleted = blocked
    names = [f"{c}" * 64 for c in "abcdef"]
    for name in names:
        trash.discard(make_tree(tmp_path / name))
    release.set()
    assert trash.drain(WAIT)
    assert [n.split("-")[0] for n in deleted] == names
    assert all(n.endswith(" on trash-trash") for n in deleted)


def test_the_same_name_discarded_twice_gets_two_entries(tmp_path: Path, trash: Trash) -> None:
    trash.discard(make_tree(tmp_path / ID))
    trash.discard(make_tree(tmp_path / ID))
    assert trash.drain(WAIT)
    assert list(trash.directory.iterdir()) == []


def test_a_missing_dir_is_fine(tmp_path: Path, trash: Trash) -> None:
    trash.discard(tmp_path / "never-made")
    assert trash.pending() == 0
    assert trash.drain(0)


def test_a_trash_dir_removed_under_the_daemon_does_not_keep_a_dir_alive(
    tmp_path: Path, trash: Trash
) -> None:
    trash.directory.rmdir()  # someone cleaned up by hand: rename says ENOENT for the target
    victim = make_tree(tmp_path / ID)
    trash.discard(victim)
    assert not victim.exists()


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EBUSY])
def test_a_dir_that_cannot_be_renamed_is_deleted_in_place_and_logged(
    tmp_path: Path,
    trash: Trash,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    code: int,
) -> None:
    def refuse(source: object, target: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(trash_module.os, "rename", refuse)
    victim = make_tree(tmp_path / ID)
    trash.discard(victim)
    # Synchronously, as before the trash existed: nothing queued, nothing left.
    assert not victim.exists()
    assert trash.pending() == 0
    assert list(trash.directory.iterdir()) == []
    (record,) = [r for r in logs.records if "deleting in place" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert getattr(record, "fields", {}).get("error") == errno.errorcode[code]


def test_a_failing_delete_is_logged_and_the_worker_goes_on(
    tmp_path: Path, trash: Trash, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    real = trash_module.remove_tree

    def busy_first(path: Path) -> None:
        if path.name.startswith(ID):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        real(path)

    monkeypatch.setattr(trash_module, "remove_tree", busy_first)
    trash.discard(make_tree(tmp_path / ID))
    trash.discard(make_tree(tmp_path / OTHER))
    assert trash.drain(WAIT)
    # The one that failed stays for the next start's sweep; the next was deleted.
    assert [p.name.split("-")[0] for p in trash.directory.iterdir()] == [ID]
    assert any("cannot delete a trash entry" in r.getMessage() for r in logs.records)


def test_sweep_deletes_what_a_crash_left(tmp_path: Path) -> None:
    left = Trash(tmp_path / "trash")
    make_tree(left.directory / f"{ID}-0badc0de")
    (left.directory / "half-deleted").mkdir()
    (left.directory / "stray-file").write_text("x")
    # A new run on the same dir (the crashed one never drained).
    restarted = Trash(tmp_path / "trash")
    assert restarted.sweep() == 3
    assert restarted.drain(WAIT)
    assert list(restarted.directory.iterdir()) == []
    assert restarted.sweep() == 0
    restarted.close(WAIT)


def test_close_drains_and_later_discards_delete_in_place(
    tmp_path: Path, blocked: tuple[threading.Event, list[str]]
) -> None:
    release, deleted = blocked
    trash = Trash(tmp_path / "trash")
    trash.discard(make_tree(tmp_path / ID))
    threading.Timer(0.1, release.set).start()
    trash.close(WAIT)
    assert list(trash.directory.iterdir()) == []
    # The worker has stopped: a discard after close does its delete itself.
    victim = make_tree(tmp_path / OTHER)
    trash.discard(victim)
    assert not victim.exists()
    assert list(trash.directory.iterdir()) == []
    assert [n.split(" on ")[1] for n in deleted] == ["trash-trash", "MainThread"]


def test_close_is_bounded_and_leaves_the_rest_for_the_next_start(
    tmp_path: Path, blocked: tuple[threading.Event, list[str]], logs: pytest.LogCaptureFixture
) -> None:
    release, _ = blocked
    trash = Trash(tmp_path / "trash")
    trash.discard(make_tree(tmp_path / ID))
    trash.close(0.05)
    assert any("next start deletes the rest" in r.getMessage() for r in logs.records)
    assert len(list(trash.directory.iterdir())) == 1
    release.set()


# --- the record stores -------------------------------------------------------------------


def test_record_delete_leaves_the_records_dir_at_once_and_trash_is_beside_it(
    tmp_path: Path, blocked: tuple[threading.Event, list[str]]
) -> None:
    release, _ = blocked
    store = RecordStore(tmp_path / "containers", Thing, "thing")
    store.save(Thing(ID, 1))
    store.save(Thing(OTHER, 2))
    make_tree(store.dir_of(ID))
    store.delete(ID)
    assert not store.dir_of(ID).exists()
    assert store.trash.directory == tmp_path / "trash" / "containers"
    # Not inside the records dir: nothing there but IDs, and the trash is never loaded.
    assert [p.name for p in store.root.iterdir()] == [OTHER]
    (entry,) = store.trash.directory.iterdir()
    assert (entry / "thing.json").exists()
    assert store.load_all() == [Thing(OTHER, 2)]
    release.set()
    assert store.trash.drain(WAIT)
    assert list(store.trash.directory.iterdir()) == []
    store.trash.close(WAIT)


def test_record_stores_of_two_kinds_have_separate_trash_dirs(tmp_path: Path) -> None:
    containers = RecordStore(tmp_path / "containers", Thing, "thing")
    sandboxes = RecordStore(tmp_path / "sandboxes", Thing, "thing")
    assert containers.trash.directory != sandboxes.trash.directory
    assert containers.trash.directory.parent == sandboxes.trash.directory.parent
