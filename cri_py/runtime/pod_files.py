"""The contents of a pod's /etc/hostname, /etc/hosts and /etc/resolv.conf (pure).

The sandbox service writes them into the sandbox dir (mode `FILE_MODE`); containers get them
bind-mounted.
"""

from __future__ import annotations

from cri_py.model.sandbox import DNSConfig

# Docker's and containerd's defaults for a pod's /etc/hosts.
_HOSTS_HEADER = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)
# Linux's HOST_NAME_MAX.
MAX_HOSTNAME = 64
# World-readable, as containerd writes them: a container running as any user resolves names
# (the daemon's umask, 077, would leave them to root alone).
FILE_MODE = 0o644


def pod_hostname(requested: str, pod_name: str, host_network: bool, node_hostname: str) -> str:
    """The hostname a pod gets: the node's with host network, else the requested one (kubelet
    always sends it), else the pod's name cut to what the kernel accepts."""
    if host_network:
        return node_hostname
    return (requested or pod_name)[: MAX_HOSTNAME - 1]


def hostname_file(hostname: str) -> str:
    return f"{hostname}\n"


def hosts_file(hostname: str, ips: tuple[str, ...]) -> str:
    return _HOSTS_HEADER + "".join(f"{ip}\t{hostname}\n" for ip in ips)


def resolv_conf(dns: DNSConfig, host_resolv_conf: str) -> str:
    """From the pod's DNSConfig when it says anything, else a copy of the host's file."""
    if dns.empty:
        return host_resolv_conf
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {server}" for server in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"
