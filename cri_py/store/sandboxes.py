"""Sandbox records on disk: `<root_dir>/sandboxes/<id>/sandbox.json`, one atomic file each.

A record is written before any side effect of RunPodSandbox starts, so a restart finds every
sandbox that may have left something behind. The same directory holds the pod's files
(hostname, hosts, resolv.conf), which go when the record goes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from cri_py.log import get_logger
from cri_py.runtime.model import SandboxRecord
from cri_py.store.atomic import read_json, write_json_atomic
from cri_py.store.codec import from_data, to_data

log = get_logger("cri_py.store")

RECORD_FILE = "sandbox.json"
_ID = re.compile(r"^[0-9a-f]{64}$")


class SandboxStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def dir_of(self, sandbox_id: str) -> Path:
        if not _ID.match(sandbox_id):
            raise ValueError(f"not a sandbox ID: {sandbox_id!r}")
        return self.root / sandbox_id

    def save(self, record: SandboxRecord) -> None:
        directory = self.dir_of(record.id)
        directory.mkdir(mode=0o700, exist_ok=True)
        write_json_atomic(directory / RECORD_FILE, to_data(record))

    def load_all(self) -> list[SandboxRecord]:
        """Every readable record; an unreadable one is logged and left for a person to see."""
        records = []
        for directory in sorted(self.root.iterdir()):
            if not _ID.match(directory.name):
                continue
            try:
                data = read_json(directory / RECORD_FILE)
                if data is None:
                    # Crashed between mkdir and the first write: nothing was started yet.
                    shutil.rmtree(directory, ignore_errors=True)
                    continue
                records.append(from_data(SandboxRecord, data))
            except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
                log.error("unreadable sandbox record", path=str(directory), error=str(e))
        return records

    def delete(self, sandbox_id: str) -> None:
        shutil.rmtree(self.dir_of(sandbox_id), ignore_errors=True)
