"""One record per object on disk: `<root>/<64-hex id>/<kind>.json`, each written atomically.

Sandboxes and containers are stored the same way; their stores only name the kind and add what
is theirs. A record is written before its object's first side effect, so a restart finds
everything that may have left something behind. Deleting a record renames its dir into
`<root>/../trash/<root name>/` (beside the records, never listed as one), emptied by a thread.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from cri_py.log import get_logger
from cri_py.store.atomic import read_json_written, sync_directory, write_json_atomic
from cri_py.store.codec import from_data, to_data
from cri_py.store.trash import Trash

log = get_logger("cri_py.store")

_ID = re.compile(r"^[0-9a-f]{64}$")


class HasId(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=HasId)


class RecordStore(Generic[R]):
    def __init__(self, root: Path, record_type: type[R], kind: str) -> None:
        self.root = root
        self._type = record_type
        self._kind = kind
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Same filesystem as the records (a rename), outside `root` (not an ID dir to list).
        self.trash = Trash(root.parent / "trash" / root.name)

    def dir_of(self, object_id: str) -> Path:
        if not _ID.match(object_id):
            raise ValueError(f"not a {self._kind} ID: {object_id!r}")
        return self.root / object_id

    def save(self, record: R, durable: bool = True) -> None:
        """`durable=False` for a record that a later durable save replaces before the call
        that made it returns, or whose news only matters while the machine is up (a started
        container: after a power loss it is dead either way); see
        `cri_py.store.atomic.write_atomic`."""
        directory = self.dir_of(record.id)
        directory.mkdir(mode=0o700, exist_ok=True)
        write_json_atomic(directory / f"{self._kind}.json", to_data(record), durable=durable)
        if durable:
            # The object's directory entry too (usually already committed with the file).
            sync_directory(self.root)

    def load_all(self) -> list[R]:
        """Every readable record; an unreadable one is logged and left for a person to see."""
        return [record for record, _ in self.read_dirs(self.root)]

    def read_dirs(self, parent: Path) -> list[tuple[R, Path]]:
        """The records of the object dirs in `parent`, with their dirs. A dir whose record was
        never written (crashed between mkdir and the first write, or lost with the power a
        first write that was not durable: nothing of it runs) goes to the trash; an
        unreadable record is logged and left for a person to see."""
        found = []
        for directory in sorted(parent.iterdir()):
            if not _ID.match(directory.name):
                continue
            try:
                data: Any = read_json_written(directory / f"{self._kind}.json")
                if data is None:
                    self.trash.discard(directory)
                    continue
                found.append((from_data(self._type, data), directory))
            except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
                log.error(f"unreadable {self._kind} record", path=str(directory), error=str(e))
        return found

    def delete(self, object_id: str) -> None:
        """The object's dir is gone from `root` on return (one rename); the worker deletes
        its files later. `trash.drain()` waits for that."""
        self.trash.discard(self.dir_of(object_id))
