"""Container records on disk: `<root_dir>/containers/<id>/container.json`, one atomic file each.

The same directory is the container's bundle: its OCI spec (`config.json`), the overlay's
`upper`/`work` dirs, the `rootfs` mount point and the shim's `exit.json` (written when the
process ends, so the exit outlives both the shim and the daemon).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from cri_py.log import get_logger
from cri_py.runtime.container_model import ContainerRecord, ExitRecord
from cri_py.store.atomic import read_json, write_json_atomic
from cri_py.store.codec import from_data, to_data

log = get_logger("cri_py.store")

RECORD_FILE = "container.json"
EXIT_FILE = "exit.json"
_ID = re.compile(r"^[0-9a-f]{64}$")


class ContainerStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def dir_of(self, container_id: str) -> Path:
        if not _ID.match(container_id):
            raise ValueError(f"not a container ID: {container_id!r}")
        return self.root / container_id

    def save(self, record: ContainerRecord) -> None:
        directory = self.dir_of(record.id)
        directory.mkdir(mode=0o700, exist_ok=True)
        write_json_atomic(directory / RECORD_FILE, to_data(record))

    def read_exit(self, container_id: str) -> ExitRecord | None:
        try:
            data = read_json(self.dir_of(container_id) / EXIT_FILE)
        except (OSError, ValueError) as e:
            log.error("unreadable exit file", container=container_id, error=str(e))
            return None
        return None if data is None else from_data(ExitRecord, data)

    def load_all(self) -> list[ContainerRecord]:
        records = []
        for directory in sorted(self.root.iterdir()):
            if not _ID.match(directory.name):
                continue
            try:
                data = read_json(directory / RECORD_FILE)
                if data is None:
                    shutil.rmtree(directory, ignore_errors=True)
                    continue
                records.append(from_data(ContainerRecord, data))
            except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
                log.error("unreadable container record", path=str(directory), error=str(e))
        return records

    def delete(self, container_id: str) -> None:
        shutil.rmtree(self.dir_of(container_id), ignore_errors=True)
