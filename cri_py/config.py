"""The configuration of cri-py: its schema, embedded defaults, loading and validation.

Sources, lowest to highest precedence: the embedded defaults (the dataclass defaults below), the
main file (`/etc/cri-py/config.yaml`), drop-ins (`/etc/cri-py/config.d/*.yaml`, lexical order,
later wins), then command-line flags. Each file is validated on its own so that an error names
the file and the key; a missing file is fine, a fresh install runs on the defaults alone.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from cri_py.errors import ConfigError, InvalidArgument
from cri_py.spec.capabilities import DEFAULT_CAPABILITIES, capability_name, is_all

DEFAULT_CONFIG_FILE = Path("/etc/cri-py/config.yaml")
DEFAULT_CONFIG_DIR = Path("/etc/cri-py/config.d")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")
CGROUP_DRIVERS = ("", "cgroupfs", "systemd")
# The characters systemd allows in a unit name.
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+$")


@dataclass(frozen=True)
class RegistryHost:
    """How to reach one registry host (the key in `registries`, e.g. `registry.k8s.io`)."""

    # Endpoints tried in order before the host itself. An endpoint's path, if any, is a
    # repository prefix on the mirror: `http://127.0.0.1:5000/registry.k8s.io` serves
    # `registry.k8s.io/pause` as repository `registry.k8s.io/pause`. Image names never change.
    mirrors: tuple[str, ...] = ()
    # Talk plain HTTP to the host itself (mirrors say their scheme in their URL).
    plain_http: bool = False
    insecure_skip_verify: bool = False
    ca_file: str = ""
    username: str = ""
    password: str = ""
    # Basic-auth "user:password" in base64, as in a Docker config.json `auth` field.
    auth: str = ""
    identity_token: str = ""


@dataclass(frozen=True)
class ImagesConfig:
    # Images reported with `pinned: true`, never garbage-collected (e.g. a pause image).
    pinned: tuple[str, ...] = ("registry.k8s.io/pause:3.10",)
    max_concurrent_downloads: int = 3
    # A pull fails when no byte arrives for this many seconds; a slow pull does not.
    progress_timeout_seconds: float = 60.0
    # One layer, unpacked: a pull whose layer inflates past these fails and keeps nothing
    # (a compression bomb, sparse files, millions of files). Generous: 64 GiB, 4M files.
    max_layer_bytes: int = 64 << 30
    max_layer_inodes: int = 4_000_000


@dataclass(frozen=True)
class NetworkConfig:
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")
    # One plugin execution (ADD or DEL) is killed after this long.
    cni_timeout_seconds: float = 60.0
    # The built-in network, used when no CNI config exists. false: no bridge, and without a
    # CNI config the node's network is not ready (pods wait), as on a node whose CNI is
    # installed by pods (kind's kindnet: its pods use the host's network and write the config).
    builtin: bool = True
    bridge: str = "cri-py0"
    subnet: str = "10.88.0.0/16"
    # Connections one hostPort relay holds at once; more are closed as they arrive.
    hostport_max_connections: int = 1024


@dataclass(frozen=True)
class StreamConfig:
    address: str = "127.0.0.1"
    port: int = 0  # 0: a random free port
    idle_timeout_seconds: int = 4 * 3600
    # Streams a client holding a valid token may have open on one SPDY connection (a
    # port-forward uses two per forwarded connection); more are refused (RST_STREAM).
    max_streams_per_session: int = 1000
    # Port-forward streams waiting for the other of their pair (data / error); more are reset.
    max_pending_port_forward_streams: int = 100


@dataclass(frozen=True)
class MetricsConfig:
    # The Prometheus endpoint (`GET /metrics`); off while `address` is empty.
    address: str = ""
    port: int = 0  # 0: a random free port (logged)


@dataclass(frozen=True)
class CgroupsConfig:
    # Where containers' cgroups go when the sandbox names no cgroup_parent (absolute from each
    # hierarchy's root, never relative to the daemon's own cgroup).
    default_parent: str = "/cri-py"
    # pids.max of every container (the CRI has no field for it); 0: no limit.
    pids_limit: int = 0
    # Where pod shims run, apart from the pods (so a shim's memory is not charged to a pod)
    # and from the daemon's own cgroup; "" leaves them in the daemon's. With the systemd
    # driver they run in the scope `cri-py-shims.scope`, in the slice of cri-py's own unit.
    shim_cgroup: str = "/cri-py-shims"
    # Who makes containers' cgroups: "cgroupfs" (cri-py writes the cgroup tree itself) or
    # "systemd" (pods are slices, containers transient scopes, made over D-Bus; kubelet's
    # cgroupDriver must match, and it follows RuntimeConfig). "" picks systemd when PID 1 is
    # systemd and answers on the system bus, else cgroupfs; the choice is logged at start.
    driver: str = ""
    # systemd driver: the slice that holds the pod slices cri-py makes for pods whose sandbox
    # names no cgroup_parent (`cri-py-pod_<id>.slice`, at /cri.slice/cri-py.slice/...).
    default_slice: str = "cri-py.slice"


@dataclass(frozen=True)
class CdiConfig:
    # Where CDI spec files (*.json, *.yaml) are read from; a device in a later dir overrides
    # one of the same name in an earlier dir (the CDI spec's order: /var/run/cdi, written by
    # drivers at boot, over /etc/cdi).
    spec_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")


@dataclass(frozen=True)
class NriConfig:
    """NRI, the Node Resource Interface (`cri_py.nri`): plugins on a unix socket hooked into
    pod and container events. Off unless enabled; the timeouts are containerd's defaults."""

    enable: bool = False
    socket_path: str = "/var/run/nri/nri.sock"
    # Executables named NN-name started by cri-py at startup, each with a socket of its own.
    plugin_path: str = "/opt/nri/plugins"
    # Their configuration: NN-name.conf or name.conf, handed over in Configure.
    plugin_config_path: str = "/etc/nri/conf.d"
    # A plugin must register within this; each call to a plugin must answer within the other
    # (else the plugin is disconnected and the event goes on without it).
    registration_timeout_seconds: float = 5.0
    request_timeout_seconds: float = 2.0


# Handler seccomp defaults besides "localhost/<path of a profile file>".
HANDLER_SECCOMP_DEFAULTS = ("", "unconfined", "runtime/default")


@dataclass(frozen=True)
class RuntimeHandlerConfig:
    """One RuntimeClass handler (`runtimes.<name>`); the defaults are the "" handler's."""

    # The seccomp profile of containers whose request sets none (the CRI says: unconfined):
    # "", "unconfined", "runtime/default" or "localhost/<path of a profile file>" (from /).
    default_seccomp_profile: str = ""
    # The capabilities a container starts from, before the CRI's add and drop.
    default_capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    # Privileged containers do not get the host's devices (nor an allow-all device cgroup).
    privileged_without_host_devices: bool = False
    # Annotations that reach each container's OCI spec, by key prefix ("*": every key): the
    # pod's (none by default) and the container's own (all by default).
    pod_annotations: tuple[str, ...] = ()
    container_annotations: tuple[str, ...] = ("*",)
    # Pods of this handler may have their own user namespace (when the host supports it).
    user_namespaces: bool = True
    # Containers of this handler may ask for recursive read-only mounts (kernel permitting).
    recursive_read_only_mounts: bool = True


@dataclass(frozen=True)
class Config:
    root_dir: str = "/var/lib/cri-py"
    run_dir: str = "/run/cri-py"
    socket: str = "/run/cri-py/cri-py.sock"
    log_level: str = "info"
    log_format: str = "logfmt"
    stream: StreamConfig = field(default_factory=StreamConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    cgroups: CgroupsConfig = field(default_factory=CgroupsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    registries: Mapping[str, RegistryHost] = field(default_factory=dict)
    cdi: CdiConfig = field(default_factory=CdiConfig)
    nri: NriConfig = field(default_factory=NriConfig)
    # RuntimeClass handlers by name; "" (the default handler) needs no entry.
    runtimes: Mapping[str, RuntimeHandlerConfig] = field(default_factory=dict)


# --- building typed values from plain YAML data -------------------------------------------------

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    """Convert one YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, source, key)
    if origin is tuple:  # tuple[str, ...]
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected a list, got {type(value).__name__}")
        (item_type, _) = typing.get_args(tp)
        return tuple(_convert(item_type, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a mapping, got {type(value).__name__}")
        (_, value_type) = typing.get_args(tp)
        return {str(k): _convert(value_type, v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(source, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(source, key, f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type[T], data: Any, source: str, prefix: str = "") -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, prefix or "<top>", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(source, dotted, f"unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _convert(hints[key], value, source, dotted)
    return cls(**kwargs)


def _validate(config: Config, source: str) -> None:
    """Checks of values (not types) that the schema alone cannot express."""
    for key in ("root_dir", "run_dir", "socket"):
        if not os.path.isabs(getattr(config, key)):
            raise ConfigError(source, key, "must be an absolute path")
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(source, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(source, "log_format", f"must be one of {', '.join(LOG_FORMATS)}")
    if not 0 <= config.stream.port <= 65535:
        raise ConfigError(source, "stream.port", "must be between 0 and 65535")
    try:
        ipaddress.ip_address(config.stream.address)
    except ValueError:
        raise ConfigError(source, "stream.address", "must be an IP address") from None
    if not 0 <= config.metrics.port <= 65535:
        raise ConfigError(source, "metrics.port", "must be between 0 and 65535")
    if config.metrics.address:
        try:
            ipaddress.ip_address(config.metrics.address)
        except ValueError:
            raise ConfigError(source, "metrics.address", "must be an IP address or empty") from None
    if config.stream.idle_timeout_seconds <= 0:
        raise ConfigError(source, "stream.idle_timeout_seconds", "must be positive")
    try:
        subnet = ipaddress.ip_network(config.network.subnet)
    except ValueError as e:
        raise ConfigError(source, "network.subnet", str(e)) from None
    if subnet.num_addresses < 4:
        raise ConfigError(source, "network.subnet", "too small for a bridge and a pod")
    for key, path in [("network.cni_conf_dir", config.network.cni_conf_dir)] + [
        (f"network.cni_bin_dirs[{i}]", p) for i, p in enumerate(config.network.cni_bin_dirs)
    ]:
        if not os.path.isabs(path):
            raise ConfigError(source, key, "must be an absolute path")
    if config.network.cni_timeout_seconds <= 0:
        raise ConfigError(source, "network.cni_timeout_seconds", "must be positive")
    if not 1 <= config.images.max_concurrent_downloads <= 64:
        raise ConfigError(source, "images.max_concurrent_downloads", "must be between 1 and 64")
    if config.images.progress_timeout_seconds <= 0:
        raise ConfigError(source, "images.progress_timeout_seconds", "must be positive")
    for key, value in (
        ("images.max_layer_bytes", config.images.max_layer_bytes),
        ("images.max_layer_inodes", config.images.max_layer_inodes),
        ("network.hostport_max_connections", config.network.hostport_max_connections),
        ("stream.max_streams_per_session", config.stream.max_streams_per_session),
        ("stream.max_pending_port_forward_streams", config.stream.max_pending_port_forward_streams),
    ):
        if value < 1:
            raise ConfigError(source, key, "must be at least 1")
    parent = config.cgroups.default_parent
    if not parent.startswith("/") or any(p in (".", "..") for p in parent.split("/")):
        raise ConfigError(source, "cgroups.default_parent", "must be an absolute cgroup path")
    shim = config.cgroups.shim_cgroup
    if shim and (
        not shim.startswith("/") or any(p in ("", ".", "..") for p in shim.split("/")[1:])
    ):
        raise ConfigError(source, "cgroups.shim_cgroup", "must be an absolute cgroup path or empty")
    if config.cgroups.pids_limit < 0:
        raise ConfigError(source, "cgroups.pids_limit", "must not be negative")
    if not config.nri.socket_path.startswith("/"):
        raise ConfigError(source, "nri.socket_path", "must be an absolute path")
    for key in ("registration_timeout_seconds", "request_timeout_seconds"):
        if getattr(config.nri, key) <= 0:
            raise ConfigError(source, f"nri.{key}", "must be positive")
    if config.cgroups.driver not in CGROUP_DRIVERS:
        raise ConfigError(source, "cgroups.driver", "must be cgroupfs, systemd or empty (detect)")
    slice_ = config.cgroups.default_slice
    if not slice_.endswith(".slice") or "/" in slice_ or not _UNIT_NAME.match(slice_):
        raise ConfigError(source, "cgroups.default_slice", "must be a systemd slice name")
    for i, directory in enumerate(config.cdi.spec_dirs):
        if not os.path.isabs(directory):
            raise ConfigError(source, f"cdi.spec_dirs[{i}]", "must be an absolute path")
    for name, handler in config.runtimes.items():
        # A RuntimeClass's handler is a DNS label (Kubernetes validates it so).
        if name and not _DNS_LABEL.fullmatch(name):
            raise ConfigError(source, f"runtimes.{name}", "a handler name must be a DNS label")
        _validate_handler(handler, source, f"runtimes.{name}")
    for host, registry in config.registries.items():
        for i, mirror in enumerate(registry.mirrors):
            url = urlsplit(mirror)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ConfigError(
                    source, f"registries.{host}.mirrors[{i}]", "must be an http(s):// URL"
                )
        if registry.ca_file and not os.path.isabs(registry.ca_file):
            raise ConfigError(source, f"registries.{host}.ca_file", "must be an absolute path")


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _validate_handler(handler: RuntimeHandlerConfig, source: str, key: str) -> None:
    seccomp = handler.default_seccomp_profile
    if seccomp not in HANDLER_SECCOMP_DEFAULTS:
        rest = seccomp.removeprefix("localhost/")
        path = "/" + rest.lstrip("/")
        if rest == seccomp or path == "/" or os.path.normpath(path) != path:
            raise ConfigError(
                source,
                f"{key}.default_seccomp_profile",
                'must be "", "unconfined", "runtime/default" or "localhost/<path of a profile>"',
            )
    for i, name in enumerate(handler.default_capabilities):
        if is_all(name):
            raise ConfigError(source, f"{key}.default_capabilities[{i}]", "list them one by one")
        try:
            capability_name(name)
        except InvalidArgument as e:
            raise ConfigError(source, f"{key}.default_capabilities[{i}]", str(e)) from None


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings: `top` wins; lists and scalars are replaced, not appended."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_layers(layers: Sequence[tuple[str, Any]]) -> Config:
    """Builds the effective config from (source name, YAML data) layers, lowest first.

    Pure: no file access. Each layer is validated alone so errors name their source.
    """
    merged: dict[str, Any] = {}
    for source, data in layers:
        if data is None:
            continue
        _validate(_build(Config, data, source), source)
        merged = _merge(merged, data)
    config = _build(Config, merged, "<merged>")
    _validate(config, "<merged>")
    return config


def _read_yaml(path: Path) -> Any:
    try:
        with path.open() as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "<syntax>", str(e).replace("\n", " ")) from None


def config_sources(config_file: Path, config_dir: Path) -> list[Path]:
    """The files that exist, in the order they apply."""
    files = [config_file] if config_file.is_file() else []
    if config_dir.is_dir():
        files += sorted(p for p in config_dir.glob("*.yaml") if p.is_file())
    return files


def load(
    config_file: Path = DEFAULT_CONFIG_FILE,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Reads the files, applies `overrides` (from flags, as nested data) last."""
    layers: list[tuple[str, Any]] = [
        (str(p), _read_yaml(p)) for p in config_sources(config_file, config_dir)
    ]
    if overrides:
        layers.append(("<flags>", dict(overrides)))
    return parse_layers(layers)


def to_data(config: Config) -> dict[str, Any]:
    """The config as plain data (tuples as lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping | types.MappingProxyType):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    result: dict[str, Any] = plain(config)
    return result


SECRET_KEYS = frozenset({"password", "auth", "identity_token"})


def dump(config: Config, redact: bool = True) -> str:
    """The effective config as YAML; secrets are replaced unless `redact` is false."""
    data = to_data(config)
    if redact:
        for registry in data["registries"].values():
            for key in SECRET_KEYS:
                if registry[key]:
                    registry[key] = "<redacted>"
    return yaml.safe_dump(data, sort_keys=False)
