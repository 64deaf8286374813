"""Container records on disk: `<root_dir>/containers/<id>/container.json`, one atomic file each.

The same directory is the container's bundle: its OCI spec (`config.json`), the overlay's
`upper`/`work` dirs, the `rootfs` mount point and the shim's `exit.json` (written when the
process ends, so the exit outlives both the shim and the daemon).
"""

from __future__ import annotations

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

    def read_exit(self, container_id: str) -> ExitRecord | None:
        try:
            data = read_json(self.dir_of(container_id) / EXIT_FILE)
        except (OSError, ValueError) as e:
            log.error("unreadable exit file", container=container_id, error=str(e))
            return None
        return None if data is None else from_data(ExitRecord, data)
