"""The sandbox service's pure rules: a RunPodSandbox config's validation, the unique name a
pod holds (name, namespace, UID, attempt) and ListPodSandbox's filter. No I/O.
"""

from __future__ import annotations

import ipaddress

from cri_py.errors import InvalidArgument
from cri_py.model.sandbox import NamespaceMode, SandboxConfig, SandboxFilter, SandboxView
from cri_py.runtime import pod_files
from cri_py.runtime.sysctls import validate_sysctls
from cri_py.spec.resources import validate_resources
from cri_py.spec.userns import validate_pod_user_namespace

NameKey = tuple[str, str, str, int]


def name_key(config: SandboxConfig) -> NameKey:
    m = config.metadata
    return (m.name, m.namespace, m.uid, m.attempt)


def name_conflict(key: NameKey, holder: str) -> str:
    return (
        f"pod sandbox name {'_'.join(map(str, key))} is already used by sandbox "
        f"{holder}; remove it first (or use another attempt)"
    )


def matches(view: SandboxView, selector: SandboxFilter) -> bool:
    """ListPodSandbox's filter: every given field must match (ID by prefix, as crictl uses)."""
    record = view.record
    if selector.id and not record.id.startswith(selector.id):
        return False
    if selector.state is not None and view.state != selector.state:
        return False
    labels = record.config.labels
    return all(labels.get(k) == v for k, v in selector.labels.items())


def validate_config(config: SandboxConfig) -> None:
    m = config.metadata
    if not m.name or not m.namespace:
        raise InvalidArgument("pod sandbox metadata needs a name and a namespace")
    if m.attempt < 0:
        raise InvalidArgument(f"pod sandbox attempt must not be negative, got {m.attempt}")
    # Container logs are created under it: a clean absolute path (kubelet's /var/log/pods/...).
    log_dir = config.log_directory
    if log_dir and (not log_dir.startswith("/") or ".." in log_dir.split("/") or "\x00" in log_dir):
        raise InvalidArgument(f"pod log directory {log_dir!r} must be absolute, without '..'")
    # sethostname(2) takes at most 64 bytes, no NUL; the name is a line of /etc/hosts too.
    hostname = pod_files.pod_hostname(config.hostname, m.name, False, "")
    if len(hostname.encode()) > pod_files.MAX_HOSTNAME or "\x00" in hostname or "\n" in hostname:
        raise InvalidArgument(f"pod hostname {hostname!r} is not a valid host name")
    ns = config.namespaces
    for kind, mode in (("network", ns.network), ("ipc", ns.ipc)):
        if mode not in (NamespaceMode.POD, NamespaceMode.NODE):
            raise InvalidArgument(f"pod {kind} namespace mode must be POD or NODE, got {mode.name}")
    if ns.pid == NamespaceMode.TARGET:
        raise InvalidArgument("pod PID namespace mode TARGET is only valid for containers")
    validate_sysctls(config.sysctls, ns)
    for port in config.port_mappings:
        try:
            # Given to the hostPort relay or CNI's portmap: an address, never a name to resolve.
            if port.host_ip:
                ipaddress.ip_address(port.host_ip)
        except ValueError:
            raise InvalidArgument(
                f"port mapping host_ip {port.host_ip!r} is not an IP address"
            ) from None
    validate_pod_user_namespace(ns)
    validate_resources(config.resources)
    validate_resources(config.overhead)
