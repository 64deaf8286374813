"""oom_score_adj clamping, as the daemon reports it: the shim sets what the CRI asks, or the
lowest value this runtime may set (lowering below it needs CAP_SYS_RESOURCE, which root lacks
on some hosts), and tells the daemon the value applied. A clamp is warned about once per
daemon: kubelet asks the same values for every Guaranteed pod, and one line says it all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from cri_py.log import get_logger


class OomScoreClamps:
    def __init__(self, warn: Callable[..., None]) -> None:
        self._warn = warn
        self._warned = False
        self._lock = threading.Lock()

    def note(self, requested: int, applied: int) -> bool:
        """Records one container's values; True when this call logged the warning."""
        if applied == requested:
            return False
        with self._lock:
            if self._warned:
                return False
            self._warned = True
        self._warn(
            "oom_score_adj clamped to what the runtime may set (no CAP_SYS_RESOURCE); warned once",
            requested=requested,
            applied=applied,
        )
        return True


def _warn(msg: str, **fields: Any) -> None:
    get_logger("cri_py.containers").warning(msg, **fields)


# The daemon's one instance.
clamps = OomScoreClamps(_warn)
