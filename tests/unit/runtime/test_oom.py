"""oom_score_adj clamps: warned about once per daemon, naming the requested and applied values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cri_py.runtime.oom import OomScoreClamps
from cri_py.shim.launcher import set_oom_score_adj


def test_a_clamp_is_warned_about_once_with_both_values() -> None:
    warnings: list[tuple[str, dict[str, Any]]] = []
    clamps = OomScoreClamps(lambda msg, **fields: warnings.append((msg, fields)))
    assert not clamps.note(500, 500)  # applied as asked: nothing to say
    assert clamps.note(-997, 0)
    assert not clamps.note(-997, 0)
    assert not clamps.note(-500, 0)
    assert len(warnings) == 1
    message, fields = warnings[0]
    assert "clamped" in message
    assert fields == {"requested": -997, "applied": 0}


def test_set_oom_score_adj_returns_what_the_process_has() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    try:
        # Raising is always allowed.
        assert set_oom_score_adj(900, proc, str(child.pid)) == 900
        # Lowering below what the runtime may set is clamped, not an error (the value is
        # -1000 only where the caller holds CAP_SYS_RESOURCE).
        assert set_oom_score_adj(-1000, proc, str(child.pid)) in (-1000, 900)
        assert int(Path(f"/proc/{child.pid}/oom_score_adj").read_text()) in (-1000, 900)
    finally:
        os.close(proc)
        child.kill()
        child.wait()
