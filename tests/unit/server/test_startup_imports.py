"""What the daemon imports to start: what a CNI node without NRI, metrics or pulls never uses
stays out (pyroute2 ~12 MiB, httpx ~5-10 MiB, prometheus_client ~4 MiB of RSS)."""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = ("pyroute2", "httpx", "prometheus_client", "cri_py.nri", "rich", "click")


def modules_loaded_by(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    probe = (
        f"import json, sys\n{code}\n"
        "print(json.dumps(sorted(m for m in sys.modules if sys.modules[m] is not None)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def test_starting_the_daemon_imports_none_of_the_lazy_modules() -> None:
    loaded = modules_loaded_by("import cri_py.cli, cri_py.server.daemon")
    assert "cri_py.server.daemon" in loaded
    assert "grpc" in loaded  # needed at start, and the probe did import the daemon
    early = [m for m in loaded if any(m == lazy or m.startswith(f"{lazy}.") for lazy in LAZY)]
    assert early == []


def test_the_registry_client_imports_httpx_without_its_command_line_client() -> None:
    loaded = modules_loaded_by("import cri_py.images.registry, httpx\nhttpx.AsyncClient()")
    assert "httpx" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("rich", "click", "pygments")]
