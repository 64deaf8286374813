"""Sandbox records on disk: `<root_dir>/sandboxes/<id>/sandbox.json` (see `store.records`).

The same directory holds the pod's files (hostname, hosts, resolv.conf), which go when the
record goes.
"""

from __future__ import annotations

from pathlib import Path

from cri_py.model.sandbox import SandboxRecord
from cri_py.store.records import RecordStore


class SandboxStore(RecordStore[SandboxRecord]):
    def __init__(self, root: Path) -> None:
        super().__init__(root, SandboxRecord, "sandbox")
