"""Startup refusals that need no root to check."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_py import cli
from cri_py.server import daemon


def test_serve_refuses_non_root_before_touching_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(daemon.os, "geteuid", lambda: 1000)
    code = cli.main(
        [
            "serve",
            "--config",
            str(tmp_path / "none"),
            "--config-dir",
            str(tmp_path / "none.d"),
            "--run-dir",
            str(tmp_path / "run"),
            "--root-dir",
            str(tmp_path / "root"),
        ]
    )
    assert code == 1
    assert "must run as root" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "root").exists()
