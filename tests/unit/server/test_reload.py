"""Config reload: which changes apply while running, which need a restart, bad files."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cri_py import config as config_mod
from cri_py.config import Config, RegistryHost, parse_layers
from cri_py.errors import ConfigError
from cri_py.server.reload import Reloader, diff, effective


def config(data: Mapping[str, Any] | None = None) -> Config:
    return parse_layers([("test.yaml", dict(data or {}))])


def test_identical_configs_have_no_changes() -> None:
    changes = diff(config(), config())
    assert changes.reloadable == () and changes.restart_needed == ()


def test_reloadable_and_restart_keys_are_named_by_their_dotted_path() -> None:
    old = config()
    new = config(
        {
            "log_level": "debug",
            "images": {"pinned": [], "max_concurrent_downloads": 5},
            "network": {"cni_conf_dir": "/etc/cni/other", "subnet": "10.1.0.0/16"},
            "stream": {"port": 10010},
        }
    )
    changes = diff(old, new)
    assert changes.reloadable == ("images.pinned", "log_level", "network.cni_conf_dir")
    assert changes.restart_needed == (
        "images.max_concurrent_downloads",
        "network.subnet",
        "stream.port",
    )


def test_registry_hosts_added_removed_or_changed() -> None:
    old = config({"registries": {"a.io": {"mirrors": ["http://m:5000"]}, "b.io": {}}})
    new = config(
        {"registries": {"a.io": {"mirrors": ["http://n:5000"], "password": "x"}, "c.io": {}}}
    )
    changes = diff(old, new)
    assert changes.reloadable == (
        "registries.a.io.mirrors",
        "registries.a.io.password",
        "registries.b.io",
        "registries.c.io",
    )
    assert changes.restart_needed == ()
    assert changes.touches("registries")


def test_a_host_named_like_a_prefix_of_another_is_not_confused() -> None:
    old = config({"registries": {"r.io": {}, "r.io.x": {}}})
    new = config({"registries": {"r.io": {"plain_http": True}}})
    assert diff(old, new).reloadable == ("registries.r.io.plain_http", "registries.r.io.x")


def test_effective_takes_reloadable_settings_and_keeps_the_rest() -> None:
    old = config()
    new = config({"log_level": "error", "network": {"bridge": "other0", "cni_bin_dirs": ["/x"]}})
    running = effective(old, new)
    assert running.log_level == "error"
    assert running.network.cni_bin_dirs == ("/x",)
    assert running.network.bridge == old.network.bridge
    # Still pending after the reload, so the next one reports it again.
    assert diff(running, new).restart_needed == ("network.bridge",)


class FakeTargets:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def set_registries(self, registries: Mapping[str, RegistryHost]) -> None:
        self.calls.append(("registries", dict(registries)))

    def set_pinned(self, pinned: Sequence[str]) -> None:
        self.calls.append(("pinned", tuple(pinned)))

    def set_cni_dirs(self, conf_dir: str, bin_dirs: Sequence[str]) -> None:
        self.calls.append(("cni", (conf_dir, tuple(bin_dirs))))

    def setup_logging(self, level: str, fmt: str) -> None:
        self.calls.append(("logging", (level, fmt)))


def test_reload_applies_only_what_changed(tmp_path: Path) -> None:
    targets = FakeTargets()
    drop_in = tmp_path / "config.d"
    drop_in.mkdir()

    def load() -> Config:
        return config_mod.load(tmp_path / "config.yaml", drop_in, {"socket": "/run/x.sock"})

    reloader = Reloader(load(), load, targets, targets, targets.setup_logging)
    (drop_in / "10-level.yaml").write_text("log_level: debug\nimages:\n  pinned: [busybox]\n")
    changes = reloader.reload()
    assert changes is not None and changes.restart_needed == ()
    assert targets.calls == [("logging", ("debug", "logfmt")), ("pinned", ("busybox",))]
    assert reloader.config.log_level == "debug"
    targets.calls.clear()
    (drop_in / "20-cni.yaml").write_text(
        "network:\n  cni_conf_dir: /etc/cni/b\n  bridge: br9\nsocket: /elsewhere.sock\n"
    )
    changes = reloader.reload()
    assert changes is not None
    assert targets.calls == [("cni", ("/etc/cni/b", ("/opt/cni/bin", "/usr/lib/cni")))]
    # Flags still win: the socket flag hides the file's value, so it is no change at all.
    assert changes.restart_needed == ("network.bridge",)


def test_bad_file_keeps_the_running_config_and_logs_file_and_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("cri_py"), "propagate", True)  # log.setup() clears it
    targets = FakeTargets()
    drop_in = tmp_path / "config.d"
    drop_in.mkdir()

    def load() -> Config:
        return config_mod.load(tmp_path / "config.yaml", drop_in)

    reloader = Reloader(load(), load, targets, targets, targets.setup_logging)
    before = reloader.config
    (drop_in / "30-bad.yaml").write_text("log_level: loud\n")
    with caplog.at_level("ERROR", logger="cri_py.reload"):
        assert reloader.reload() is None
    assert reloader.config is before and targets.calls == []
    (record,) = [r for r in caplog.records if r.name == "cri_py.reload"]
    error = record.fields["error"]  # type: ignore[attr-defined]
    assert "30-bad.yaml: log_level: must be one of" in error
    with pytest.raises(ConfigError):
        load()
