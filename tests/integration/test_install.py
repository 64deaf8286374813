"""`make install` / `make uninstall` into a temp tree: the unit verifies, nothing is left."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest

from .conftest import needs_root

TOP = Path(__file__).resolve().parents[2]

pytestmark = [
    needs_root,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze"),
]


def run_install(command: str, base: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFIX": str(base / "opt" / "cri-py"),
        "SYSCONFDIR": str(base / "etc"),
        "UNITDIR": str(base / "etc" / "systemd" / "system"),
    }
    return subprocess.run(
        [str(TOP / "systemd" / "install.sh"), command],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=True,
    )


def test_install_verifies_and_uninstall_leaves_nothing(tmp_path: Path) -> None:
    run_install("install", tmp_path)
    unit = tmp_path / "etc" / "systemd" / "system" / "cri-py.service"
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr
    assert f"ExecStart={tmp_path}/opt/cri-py/bin/cri-py serve" in unit.read_text()
    assert "KillMode=process" in unit.read_text()
    config = subprocess.run(
        [
            str(tmp_path / "opt" / "cri-py" / "bin" / "cri-py"),
            "config",
            "--config",
            str(tmp_path / "etc" / "cri-py" / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "socket: /run/cri-py/cri-py.sock" in config.stdout
    assert "cri-py.sock" in (tmp_path / "etc" / "crictl.yaml").read_text()

    run_install("uninstall", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_uninstall_keeps_a_config_the_operator_changed(tmp_path: Path) -> None:
    run_install("install", tmp_path)
    config = tmp_path / "etc" / "cri-py" / "config.yaml"
    config.write_text("log_level: debug\n")
    result = run_install("uninstall", tmp_path)
    assert config.read_text() == "log_level: debug\n"
    assert f"kept {config}" in result.stdout
    assert not (tmp_path / "opt" / "cri-py").exists()


def test_ctr_stand_ins_install_answer_kind_and_uninstall(tmp_path: Path) -> None:
    bindir = tmp_path / "usr" / "local" / "bin"
    env = {"CTR_STAND_IN": "1", "BINDIR": str(bindir)}
    with mock.patch.dict(os.environ, env):
        run_install("install", tmp_path)
    # What kind's getSnapshotter runs, and a ctr call it does not make, refused by name.
    dump = subprocess.run(
        [str(bindir / "containerd"), "config", "dump"], capture_output=True, text=True, check=True
    )
    assert 'snapshotter = "overlayfs"' in dump.stdout
    other = subprocess.run(
        [str(bindir / "ctr"), "-n", "k8s.io", "containers", "list"], capture_output=True, text=True
    )
    assert other.returncode == 1 and "cri-py's stand-in for containerd's ctr" in other.stderr
    run_install("uninstall", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ctr_stand_ins_never_replace_a_real_ctr(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ctr").write_text("#!/bin/sh\necho real ctr\n")
    stand_ins = {"CTR_STAND_IN": "1", "BINDIR": str(bindir)}
    with (
        mock.patch.dict(os.environ, stand_ins),
        pytest.raises(subprocess.CalledProcessError) as failed,
    ):
        run_install("install", tmp_path)
    assert "not replacing it" in failed.value.stderr
    assert (bindir / "ctr").read_text() == "#!/bin/sh\necho real ctr\n"
    assert not (tmp_path / "opt").exists() and not (bindir / "containerd").exists()
