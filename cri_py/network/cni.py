"""CNI, the pure half: choosing and validating a network config list, and building what each
plugin gets (environment and stdin) and reading what it answers (result, error).

No files, processes or clock here: `cni_exec` reads the config dir, runs the plugins and keeps
the per-pod cache. The rules follow the CNI spec (github.com/containernetworking/cni SPEC.md)
and libcni's behaviour where the spec leaves room (lexical order, a .conf wrapped as a list).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cri_py.errors import Unavailable
from cri_py.model.sandbox import PortMapping

# What libcni's ConfFiles picks up; `.json` is a single-plugin config like `.conf`.
CONFIG_EXTENSIONS = (".conflist", ".conf", ".json")
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
POD_INTERFACE = "eth0"
# A plugin's `type` is the name of an executable in a bin dir: never a path.
_PLUGIN_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# CRI Protocol enum -> the strings the portMappings capability uses.
_PROTOCOLS = {0: "tcp", 1: "udp", 2: "sctp"}
# CNI error code 3: "container unknown or does not exist"; the runtime needs no more cleanup.
ERROR_UNKNOWN_CONTAINER = 3


class CniConfigError(ValueError):
    """A config file that cannot be used; the message says why."""


@dataclass(frozen=True)
class NetworkConfigList:
    """One network: its name, spec version and plugins in chain order (raw JSON objects)."""

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    source: str = ""  # the file it came from

    def to_data(self) -> dict[str, Any]:
        """The list as a conflist document (what the per-pod cache stores)."""
        return {"cniVersion": self.cni_version, "name": self.name, "plugins": list(self.plugins)}

    @property
    def plugin_types(self) -> tuple[str, ...]:
        return tuple(str(p["type"]) for p in self.plugins)


@dataclass(frozen=True)
class ConfigChoice:
    """The outcome of reading a config dir: the list to use (if any) and the files skipped."""

    config: NetworkConfigList | None
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _check_plugin(plugin: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(plugin, dict):
        raise CniConfigError(f"{where} is not a JSON object")
    kind = plugin.get("type")
    if not isinstance(kind, str) or not kind:
        raise CniConfigError(f"{where} has no 'type'")
    if not _PLUGIN_TYPE.match(kind):
        raise CniConfigError(f"{where}: type {kind!r} is not a plain executable name")
    capabilities = plugin.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise CniConfigError(f"{where}: 'capabilities' is not a JSON object")
    return plugin


def parse_config(text: str | bytes, source: str = "") -> NetworkConfigList:
    """A conflist, or a single-plugin config (a `.conf`) wrapped as a one-plugin list.

    Which form a file holds is read from its content (a `plugins` key), not its extension.
    Raises CniConfigError naming what is wrong.
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CniConfigError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CniConfigError("not a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise CniConfigError("no 'name'")
    version = data.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniConfigError("no 'cniVersion'")
    if version not in SUPPORTED_VERSIONS:
        raise CniConfigError(
            f"cniVersion {version!r} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    if "plugins" in data:
        plugins = data["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise CniConfigError("'plugins' must be a non-empty list")
        checked = tuple(_check_plugin(p, f"plugin {i}") for i, p in enumerate(plugins))
    else:
        checked = (_check_plugin(data, "the config"),)
    return NetworkConfigList(name=name, cni_version=version, plugins=checked, source=source)


def is_config_file(name: str) -> bool:
    return name.endswith(CONFIG_EXTENSIONS) and not name.startswith(".")


def choose_config(files: Iterable[tuple[str, str | bytes]]) -> ConfigChoice:
    """The first valid config among (file name, content) pairs in lexical order of the name.

    Invalid files are skipped with their reason, as kubelet-era runtimes do, so a half-written
    or broken file never hides a good one that sorts after it.
    """
    skipped: list[tuple[str, str]] = []
    for name, text in sorted(files, key=lambda pair: pair[0]):
        if not is_config_file(name.rsplit("/", 1)[-1]):
            continue
        try:
            return ConfigChoice(parse_config(text, name), tuple(skipped))
        except CniConfigError as e:
            skipped.append((name, str(e)))
    return ConfigChoice(None, tuple(skipped))


# --- one plugin invocation ------------------------------------------------------------------


@dataclass(frozen=True)
class PodIdentity:
    """Who the network is for: CNI_ARGS carries these to the plugins (kubelet's names)."""

    namespace: str
    name: str
    uid: str
    sandbox_id: str


@dataclass(frozen=True)
class Invocation:
    """Everything about an ADD or DEL that is the same for each plugin of the list."""

    container_id: str
    netns: str
    pod: PodIdentity
    ifname: str = POD_INTERFACE
    # Capability name -> value, e.g. {"portMappings": [...]}; a plugin gets the ones it asks for.
    capabilities: Mapping[str, Any] = field(default_factory=dict)


def cni_args(pod: PodIdentity) -> str:
    """CNI_ARGS as kubelet's dockershim and containerd send them; IgnoreUnknown=1 lets plugins
    that do not know the K8S_ keys accept them."""
    return ";".join(
        [
            "IgnoreUnknown=1",
            f"K8S_POD_NAMESPACE={pod.namespace}",
            f"K8S_POD_NAME={pod.name}",
            f"K8S_POD_INFRA_CONTAINER_ID={pod.sandbox_id}",
            f"K8S_POD_UID={pod.uid}",
        ]
    )


def plugin_env(
    command: str, invocation: Invocation, bin_dirs: Sequence[str], base: Mapping[str, str]
) -> dict[str, str]:
    """The plugin's environment: `base` (the daemon's own, for PATH: portmap runs iptables) plus
    the CNI_ variables. Any CNI_ variable already in `base` is replaced."""
    env = {k: v for k, v in base.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=invocation.container_id,
        CNI_NETNS=invocation.netns,
        CNI_IFNAME=invocation.ifname,
        CNI_PATH=":".join(bin_dirs),
        CNI_ARGS=cni_args(invocation.pod),
    )
    return env


def plugin_config(
    network: NetworkConfigList,
    plugin: Mapping[str, Any],
    capabilities: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The JSON a plugin reads on stdin: its own object plus the list's name and version, the
    previous plugin's result, and `runtimeConfig` holding only the capabilities it declares
    (SPEC.md, "Deriving execution configuration from plugin configuration")."""
    config = dict(plugin)
    config["name"] = network.name
    config["cniVersion"] = network.cni_version
    config.pop("runtimeConfig", None)
    declared = plugin.get("capabilities", {})
    runtime = {k: v for k, v in capabilities.items() if declared.get(k) is True}
    if runtime:
        config["runtimeConfig"] = runtime
    if prev_result is not None:
        config["prevResult"] = prev_result
    else:
        config.pop("prevResult", None)
    return config


def chains_results(version: str) -> bool:
    """Whether plugins get `prevResult` (chaining started with spec 0.3.0)."""
    return version_tuple(version) >= (0, 3, 0)


def del_gets_prev_result(version: str) -> bool:
    """DEL carries the cached ADD result from spec 0.4.0 on."""
    return version_tuple(version) >= (0, 4, 0)


def port_mappings(mappings: Iterable[PortMapping]) -> list[dict[str, Any]]:
    """The `portMappings` capability value; mappings without a host port are not published
    (kubelet sends container ports too, with host port 0)."""
    result = []
    for m in mappings:
        if m.host_port <= 0:
            continue
        entry: dict[str, Any] = {
            "hostPort": m.host_port,
            "containerPort": m.container_port,
            "protocol": _PROTOCOLS.get(m.protocol, "tcp"),
        }
        if m.host_ip:
            entry["hostIP"] = m.host_ip
        result.append(entry)
    return result


# --- what plugins answer --------------------------------------------------------------------


class CniPluginError(Unavailable):
    """A plugin failed: its CNI error (code, msg, details) or how it died.

    UNAVAILABLE: the node's network plumbing failed, not the request; kubelet retries.
    """

    def __init__(self, plugin: str, command: str, message: str, code: int = 0) -> None:
        super().__init__(f"CNI plugin {plugin} {command} failed: {message}")
        self.plugin = plugin
        self.command = command
        self.cni_code = code  # not `code`: that is the status `Code` of every CriError


def plugin_error(plugin: str, command: str, stdout: bytes, stderr: bytes, status: int) -> str:
    """The message for a failed plugin: its JSON error if it printed one, else its stderr."""
    with contextlib.suppress(ValueError):  # JSON and UTF-8 errors
        data = json.loads(stdout)
        if isinstance(data, dict) and "code" in data:
            parts = [f"code {data['code']}", str(data.get("msg", ""))]
            if data.get("details"):
                parts.append(str(data["details"]))
            return ": ".join(p for p in parts if p)
    text = (stderr or stdout).decode(errors="replace").strip()
    return f"exit status {status}" + (f": {text[-2000:]}" if text else "")


def error_code(stdout: bytes) -> int:
    with contextlib.suppress(ValueError):  # JSON and UTF-8 errors
        data = json.loads(stdout)
        if isinstance(data, dict) and isinstance(data.get("code"), int):
            return int(data["code"])
    return 0


def parse_result(stdout: bytes, plugin: str) -> dict[str, Any]:
    """A plugin's ADD result; an empty answer is an empty result."""
    if not stdout.strip():
        return {}
    try:
        data = json.loads(stdout)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CniPluginError(plugin, "ADD", f"result is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise CniPluginError(plugin, "ADD", "result is not a JSON object")
    return data


def result_ips(result: Mapping[str, Any], ifname: str = POD_INTERFACE) -> tuple[str, ...]:
    """The pod's addresses in a result (without prefix length), IPv4 first as kubelet expects
    the primary one to be.

    Spec >= 0.3.0 lists `ips`, each optionally pointing at an `interfaces` entry: addresses on a
    host-side interface (no `sandbox`) or on another pod interface than `ifname` are not the
    pod's. Spec 0.1/0.2 results carry `ip4`/`ip6` instead.
    """
    interfaces = result.get("interfaces") or []
    found: list[str] = []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or "address" not in entry:
            continue
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            interface = interfaces[index]
            if isinstance(interface, dict):
                if not interface.get("sandbox"):
                    continue
                if interface.get("name") not in (None, "", ifname):
                    continue
        found.append(str(entry["address"]))
    for legacy in ("ip4", "ip6"):
        block = result.get(legacy)
        if isinstance(block, dict) and "ip" in block:
            found.append(str(block["ip"]))
    addresses = []
    for text in found:
        address = ipaddress.ip_interface(text).ip
        if str(address) not in addresses:
            addresses.append(str(address))
    return tuple(sorted(addresses, key=lambda a: ipaddress.ip_address(a).version))
