"""Config layering and validation: defaults, files, drop-ins, flags; errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_py import config as config_mod
from cri_py.config import Config, RegistryHost, load, parse_layers
from cri_py.errors import ConfigError


def test_no_files_gives_embedded_defaults(tmp_path: Path) -> None:
    config = load(tmp_path / "missing.yaml", tmp_path / "missing.d")
    assert config == Config()
    assert config.socket == "/run/cri-py/cri-py.sock"
    assert config.network.cni_bin_dirs == ("/opt/cni/bin", "/usr/lib/cni")


def test_drop_ins_apply_in_lexical_order_and_flags_win(tmp_path: Path) -> None:
    main = tmp_path / "config.yaml"
    main.write_text("log_level: debug\nstream:\n  port: 1000\n")
    drop_ins = tmp_path / "config.d"
    drop_ins.mkdir()
    (drop_ins / "20-late.yaml").write_text("stream:\n  port: 2000\n")
    (drop_ins / "10-early.yaml").write_text("stream:\n  port: 1500\n  address: 127.0.0.2\n")
    (drop_ins / "ignored.txt").write_text("not: yaml config")
    config = load(main, drop_ins, {"log_level": "warning"})
    assert config.stream.port == 2000
    assert config.stream.address == "127.0.0.2"  # merged, not replaced by the later drop-in
    assert config.log_level == "warning"


def test_registry_mirrors_are_typed(tmp_path: Path) -> None:
    config = parse_layers(
        [
            (
                "f.yaml",
                {
                    "registries": {
                        "registry.k8s.io": {
                            "mirrors": ["http://127.0.0.1:5000/registry.k8s.io"],
                            "username": "u",
                            "password": "secret",
                        }
                    }
                },
            )
        ]
    )
    assert config.registries["registry.k8s.io"] == RegistryHost(
        mirrors=("http://127.0.0.1:5000/registry.k8s.io",), username="u", password="secret"
    )
    dumped = config_mod.dump(config)
    assert "secret" not in dumped and "<redacted>" in dumped
    assert "secret" in config_mod.dump(config, redact=False)


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"log_levle": "info"}, "log_levle", "unknown key"),
        ({"stream": {"prot": 1}}, "stream.prot", "unknown key"),
        ({"log_level": "loud"}, "log_level", "must be one of"),
        ({"stream": {"port": "80"}}, "stream.port", "expected an integer"),
        ({"stream": {"port": 70000}}, "stream.port", "between 0 and 65535"),
        ({"stream": {"address": "localhost"}}, "stream.address", "IP address"),
        ({"root_dir": "var/lib"}, "root_dir", "absolute path"),
        ({"network": {"subnet": "10.88.0.0/33"}}, "network.subnet", ""),
        ({"network": {"cni_bin_dirs": "/opt/cni/bin"}}, "network.cni_bin_dirs", "a list"),
        ({"registries": {"r.io": {"mirrors": ["ftp://x"]}}}, "registries.r.io.mirrors[0]", "URL"),
        ({"registries": {"r.io": {"plain_http": "yes"}}}, "registries.r.io.plain_http", "true"),
        ({"images": {"max_concurrent_downloads": 0}}, "images.max_concurrent_downloads", ""),
        ({"metrics": {"address": "localhost"}}, "metrics.address", "IP address"),
        ({"metrics": {"port": -1}}, "metrics.port", "between 0 and 65535"),
        ({"images": {"max_layer_bytes": 0}}, "images.max_layer_bytes", "at least 1"),
        ({"images": {"max_layer_inodes": -5}}, "images.max_layer_inodes", "at least 1"),
        (
            {"network": {"hostport_max_connections": 0}},
            "network.hostport_max_connections",
            "at least 1",
        ),
        ({"stream": {"max_streams_per_session": 0}}, "stream.max_streams_per_session", "least"),
        (
            {"stream": {"max_pending_port_forward_streams": 0}},
            "stream.max_pending_port_forward_streams",
            "at least 1",
        ),
        ([1, 2], "<top>", "mapping"),
    ],
)
def test_bad_values_name_file_and_key(data: object, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_layers([("/etc/cri-py/config.d/50-bad.yaml", data)])
    assert excinfo.value.source == "/etc/cri-py/config.d/50-bad.yaml"
    assert excinfo.value.key == key
    assert reason in excinfo.value.reason


def test_error_names_the_drop_in_that_is_wrong(tmp_path: Path) -> None:
    main = tmp_path / "config.yaml"
    main.write_text("log_level: info\n")
    drop_ins = tmp_path / "config.d"
    drop_ins.mkdir()
    (drop_ins / "10-ok.yaml").write_text("log_format: json\n")
    (drop_ins / "20-bad.yaml").write_text("log_format: xml\n")
    with pytest.raises(ConfigError, match=r"20-bad\.yaml: log_format: must be one of"):
        load(main, drop_ins)


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    main = tmp_path / "config.yaml"
    main.write_text("log_level: [unclosed\n")
    with pytest.raises(ConfigError) as excinfo:
        load(main, tmp_path / "none.d")
    assert excinfo.value.source == str(main)
    assert excinfo.value.key == "<syntax>"


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    main = tmp_path / "config.yaml"
    main.write_text("# nothing set\n")
    assert load(main, tmp_path / "none.d") == Config()


def test_resource_bounds_default_to_what_their_modules_use_without_a_config() -> None:
    from cri_py.images.unpack import LayerLimits
    from cri_py.network.hostports import DEFAULT_MAX_CONNECTIONS
    from cri_py.streaming.portforward import DEFAULT_MAX_PENDING
    from cri_py.streaming.session import DEFAULT_MAX_STREAMS

    config = parse_layers([])
    limits = LayerLimits()
    assert (config.images.max_layer_bytes, config.images.max_layer_inodes) == (
        limits.max_bytes,
        limits.max_inodes,
    )
    assert config.network.hostport_max_connections == DEFAULT_MAX_CONNECTIONS
    assert config.stream.max_streams_per_session == DEFAULT_MAX_STREAMS
    assert config.stream.max_pending_port_forward_streams == DEFAULT_MAX_PENDING


def test_runtime_handlers_merge_per_handler_across_files(tmp_path: Path) -> None:
    main = tmp_path / "config.yaml"
    main.write_text(
        "runtimes:\n  test-handler:\n    default_seccomp_profile: runtime/default\n"
        "cdi:\n  spec_dirs: [/etc/cdi]\n"
    )
    drop_ins = tmp_path / "config.d"
    drop_ins.mkdir()
    (drop_ins / "10.yaml").write_text(
        "runtimes:\n  test-handler:\n    default_capabilities: [chown, CAP_KILL]\n"
        "  '':\n    privileged_without_host_devices: true\n"
    )
    config = load(main, drop_ins)
    handler = config.runtimes["test-handler"]
    assert handler.default_seccomp_profile == "runtime/default"
    assert handler.default_capabilities == ("chown", "CAP_KILL")
    assert config.runtimes[""].privileged_without_host_devices
    assert config.cdi.spec_dirs == ("/etc/cdi",)
    assert Config().cdi.spec_dirs == ("/etc/cdi", "/var/run/cdi")
    assert Config().runtimes == {}


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"runtimes": {"Test_Handler": {}}}, "runtimes.Test_Handler", "DNS label"),
        (
            {"runtimes": {"h": {"default_seccomp_profile": "docker/default"}}},
            "runtimes.h.default_seccomp_profile",
            "must be",
        ),
        (
            {"runtimes": {"h": {"default_seccomp_profile": "localhost/../etc/x"}}},
            "runtimes.h.default_seccomp_profile",
            "must be",
        ),
        (
            {"runtimes": {"h": {"default_capabilities": ["CAP_FLY"]}}},
            "runtimes.h.default_capabilities[0]",
            "unknown capability",
        ),
        (
            {"runtimes": {"h": {"default_capabilities": ["ALL"]}}},
            "runtimes.h.default_capabilities[0]",
            "one by one",
        ),
        ({"runtimes": {"h": {"user_namespaces": "yes"}}}, "runtimes.h.user_namespaces", "true"),
        ({"runtimes": {"h": {"typo": 1}}}, "runtimes.h.typo", "unknown key"),
        ({"cdi": {"spec_dirs": ["etc/cdi"]}}, "cdi.spec_dirs[0]", "absolute"),
    ],
)
def test_bad_runtime_handlers_and_cdi_dirs_name_the_key(
    data: object, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_layers([("f.yaml", data)])
    assert excinfo.value.key == key
    assert reason in str(excinfo.value)


def test_nri_is_off_by_default_with_containerds_timeouts_and_checked_when_set() -> None:
    nri = parse_layers([]).nri
    assert (nri.enable, nri.socket_path) == (False, "/var/run/nri/nri.sock")
    assert (nri.registration_timeout_seconds, nri.request_timeout_seconds) == (5.0, 2.0)
    on = parse_layers([("f.yaml", {"nri": {"enable": True, "request_timeout_seconds": 10}})])
    assert on.nri.enable and on.nri.request_timeout_seconds == 10
    for bad, key in (
        ({"socket_path": "nri.sock"}, "nri.socket_path"),
        ({"request_timeout_seconds": 0}, "nri.request_timeout_seconds"),
        ({"registration_timeout_seconds": -1}, "nri.registration_timeout_seconds"),
    ):
        with pytest.raises(ConfigError, match=key):
            parse_layers([("f.yaml", {"nri": bad})])
