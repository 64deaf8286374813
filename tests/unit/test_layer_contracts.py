"""The layer contracts in pyproject.toml (`lint-imports`): they hold on the tree as it is, and
an upward import added to a copy of the tree breaks them, with the offending import named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = "Layers: cli, server, runtime, services, syscall edge, pure spec/oci, model at the bottom"
SHIM = "The shim (forked per pod) never imports grpc, the daemon's server or its services"
PURE = "The pure core and the error hierarchy import no grpc or protobuf"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the copy under test shadows the editable install of the real tree.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_tree(tmp_path: Path) -> Path:
    shutil.copytree(
        REPO / "cri_py", tmp_path / "cri_py", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_layer_contract() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    report = " ".join(result.stdout.split())
    assert all(f"{name} KEPT" in report for name in (LAYERS, SHIM, PURE)), result.stdout
    assert "3 kept, 0 broken" in report


@pytest.mark.parametrize(
    ("module", "line", "broken", "named"),
    [
        # The records at the bottom reaching up into a service.
        (
            "model/sandbox.py",
            "from cri_py.runtime import containers",
            LAYERS,
            "cri_py.model.sandbox -> cri_py.runtime.containers",
        ),
        # The pure spec builder reaching into the syscall edge, which sits above it.
        (
            "spec/mounts.py",
            "from cri_py.linux import rootfs",
            LAYERS,
            "cri_py.spec.mounts -> cri_py.linux.rootfs",
        ),
        # The shim pulling in grpc (it forks: gRPC Python does not support fork).
        ("shim/logs.py", "import grpc", SHIM, "cri_py.shim.logs -> grpc"),
        # The error hierarchy pulling grpc back in, and with it the pure core.
        ("errors.py", "import grpc", PURE, "cri_py.errors -> grpc"),
    ],
)
def test_an_added_upward_import_breaks_the_contract_and_is_named(
    tmp_path: Path, module: str, line: str, broken: str, named: str
) -> None:
    root = _copy_tree(tmp_path)
    target = root / "cri_py" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa: E402\n")

    result = _lint_imports(root)

    assert result.returncode != 0, result.stdout
    report = " ".join(result.stdout.split())  # lint-imports wraps long names at 80 columns
    assert f"{broken} BROKEN" in report, result.stdout
    assert "2 kept, 1 broken" in report, result.stdout
    assert named in result.stdout, result.stdout


def test_the_pure_core_the_shim_and_the_cli_load_without_grpc() -> None:
    # The static contracts above, checked at run time as well: what `python -m cri_py.shim`
    # and the CLI load before serving must not include grpc or protobuf.
    code = (
        "import sys\n"
        "import cri_py.errors, cri_py.model.container, cri_py.spec.build, cri_py.oci.plan\n"
        "import cri_py.shim.main, cri_py.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
