"""Container records on disk: `<root_dir>/containers/<id>/container.json`, one atomic file each.

The same directory is the container's bundle: its OCI spec (`config.json`), the overlay's
`upper`/`work` dirs, the `rootfs` mount point and the shim's `exit.json` (written when the
process ends, so the exit outlives both the shim and the daemon).

A container RemoveContainer answered for but whose cleanup is not finished lives in
`<root_dir>/removing/containers/<id>/` (`begin_removal`): out of the records, where the next
start finds it and finishes the cleanup (`removals`) if the daemon died first.
"""

from __future__ import annotations

import os
from pathlib import Path

from cri_py.log import get_logger
from cri_py.model.container import ContainerRecord, ExitRecord
from cri_py.store.atomic import read_json
from cri_py.store.codec import from_data
from cri_py.store.records import RecordStore

log = get_logger("cri_py.store")

EXIT_FILE = "exit.json"


class ContainerStore(RecordStore[ContainerRecord]):
    def __init__(self, root: Path) -> None:
        super().__init__(root, ContainerRecord, "container")
        # Same filesystem as the records (a rename), outside `root` (never listed as one).
        self.removing = root.parent / "removing" / root.name
        self.removing.mkdir(mode=0o700, parents=True, exist_ok=True)

    def begin_removal(self, container_id: str) -> Path:
        """Moves the container's dir out of the records (one rename: a restart no longer
        finds the container, but finds its cleanup to finish); returns where it is now.
        OSError when it cannot be moved (then nothing changed)."""
        target = self.removing / container_id
        os.rename(self.dir_of(container_id), target)
        return target

    def removals(self) -> list[tuple[ContainerRecord, Path]]:
        """The containers whose removal the daemon died in the middle of, with their dirs."""
        return self.read_dirs(self.removing)

    def read_exit(self, container_id: str) -> ExitRecord | None:
        try:
            data = read_json(self.dir_of(container_id) / EXIT_FILE)
        except (OSError, ValueError) as e:
            log.error("unreadable exit file", container=container_id, error=str(e))
            return None
        return None if data is None else from_data(ExitRecord, data)
