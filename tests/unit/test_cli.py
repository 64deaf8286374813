"""The `cri-py` command line: flags become a validated config layer; `config` prints it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cri_py import cli


def test_config_command_prints_effective_config_with_flag_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = tmp_path / "config.yaml"
    main.write_text("log_format: json\nstream:\n  port: 1234\n")
    code = cli.main(
        [
            "config",
            "--config",
            str(main),
            "--config-dir",
            str(tmp_path / "d"),
            "--stream-port",
            "4321",
            "--root-dir",
            "/srv/cri",
        ]
    )
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["log_format"] == "json"
    assert printed["stream"]["port"] == 4321
    assert printed["root_dir"] == "/srv/cri"
    assert printed["socket"] == "/run/cri-py/cri-py.sock"


def test_bad_config_exits_2_with_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = tmp_path / "config.yaml"
    main.write_text("stream:\n  adress: 127.0.0.1\n")
    code = cli.main(["config", "--config", str(main), "--config-dir", str(tmp_path / "d")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{main}: stream.adress: unknown key" in err


def test_flag_values_are_validated_like_file_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "config",
            "--config",
            str(tmp_path / "x"),
            "--config-dir",
            str(tmp_path / "d"),
            "--run-dir",
            "relative/run",
        ]
    )
    assert code == 2
    assert "<flags>: run_dir: must be an absolute path" in capsys.readouterr().err
