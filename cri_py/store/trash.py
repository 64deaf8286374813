"""Deferred deletion: a directory leaves its place by one rename into a trash dir on the same
filesystem, and a background thread deletes it later, off the caller's path.

Owners decide what goes and when the trash is swept (at start, for what a crash left) and
drained (at a clean stop); this module only moves, deletes and waits. Nothing in a trash dir
is ever read back: its entries are named `<old name>-<random>` and only deleted.
"""

from __future__ import annotations

import collections
import errno
import os
import secrets
import shutil
import stat
import threading
import time
from pathlib import Path

from cri_py.log import get_logger

log = get_logger("cri_py.store.trash")

# How long a clean stop waits for the trash to empty; what is left, the next start deletes.
DRAIN_SECONDS = 10.0


def _make_traversable(path: str) -> None:
    os.chmod(path, stat.S_IRWXU)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                _make_traversable(entry.path)


def remove_tree(path: Path) -> None:
    """Removes a file or directory tree, even one whose modes forbid it to its owner (a layer
    unpacked without root can hold 0555 directories); a missing path is fine."""
    if not path.is_dir() or path.is_symlink():
        path.unlink(missing_ok=True)
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        _make_traversable(str(path))
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def trash_name(path: Path) -> str:
    """A fresh name for `path` in a trash dir: the same name removed twice must not collide."""
    return f"{path.name}-{secrets.token_hex(4)}"


class Trash:
    """`<directory>/`, whose entries one worker thread deletes in the order they came."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._queue: collections.deque[Path] = collections.deque()
        self._changed = threading.Condition()
        self._busy = False  # the worker is deleting an entry it took off the queue
        self._worker: threading.Thread | None = None
        self._closed = False

    def discard(self, path: Path) -> None:
        """`path` is gone from its place when this returns; its content is deleted later.

        Where the rename cannot be done (another filesystem, `path` itself a mount point: rename
        says EXDEV or EBUSY), the tree is deleted here and now, as before the trash existed."""
        target = self.directory / trash_name(path)
        try:
            os.rename(path, target)
        except OSError as e:
            if isinstance(e, FileNotFoundError) and not os.path.lexists(path):
                return  # nothing to delete (an ENOENT for the trash dir itself falls through)
            log.warning(
                "cannot move into the trash; deleting in place",
                path=str(path),
                error=errno.errorcode.get(e.errno or 0, str(e)),
            )
            self._delete(path)
            return
        self._submit(target)

    def sweep(self) -> int:
        """Queues what the trash already holds (a crash or an undrained stop left it);
        returns how many entries. Called once at start, before anything is discarded."""
        entries = sorted(self.directory.iterdir())
        for entry in entries:
            self._submit(entry)
        if entries:
            log.info("emptying the trash left by the last run", dir=str(self.directory))
        return len(entries)

    def drain(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Waits until everything discarded so far is deleted (or failed and was logged);
        False when `timeout` seconds passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._worker is None:
                    return False
                self._changed.wait(left)
        return True

    def pending(self) -> int:
        """Entries not yet deleted (queued or being deleted)."""
        with self._changed:
            return len(self._queue) + self._busy

    def close(self, timeout: float = DRAIN_SECONDS) -> None:
        """Drains (bounded) and stops the worker; later discards delete in place."""
        if not self.drain(timeout):
            log.warning(
                "trash not emptied before stop; the next start deletes the rest",
                dir=str(self.directory),
                entries=self.pending(),
            )
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=1.0)

    # --- the worker ------------------------------------------------------------------------

    def _submit(self, entry: Path) -> None:
        with self._changed:
            if self._closed:
                closed = True
            else:
                closed = False
                self._queue.append(entry)
                if self._worker is None:
                    self._worker = threading.Thread(
                        target=self._run, name=f"trash-{self.directory.name}", daemon=True
                    )
                    self._worker.start()
                self._changed.notify_all()
        if closed:
            self._delete(entry)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    return
                entry = self._queue.popleft()
                self._busy = True
            try:
                self._delete(entry)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    @staticmethod
    def _delete(path: Path) -> None:
        try:
            remove_tree(path)
        except OSError as e:
            # A mount point still inside (EBUSY), an immutable file: a person has to look.
            log.error("cannot delete a trash entry", path=str(path), error=str(e))
