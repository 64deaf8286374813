"""What a shim is asked to be: written by the daemon as `shim.json` in the sandbox's run dir and
read by the shim at start. Stdlib only (the shim imports it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SHIM_SPEC_FILE = "shim.json"
SOCKET_FILE = "shim.sock"
LOG_FILE = "shim.log"
EXIT_FILE = "exit.json"
# The shim template's module, and the argv space it is started with so that each shim it forks
# can show the command line an exec'd shim would have (`ps` and cri-py's leak checks find a
# shim by the bundle path in its /proc/<pid>/cmdline).
TEMPLATE_MODULE = "cri_py.shim.zygote"
TEMPLATE_TITLE_SPACE = 512


@dataclass(frozen=True)
class ShimSpec:
    sandbox_id: str
    # Empty: keep the host's (UTS namespace shared).
    hostname: str = ""
    # Namespaces the shim creates; the others are the host's.
    new_net: bool = True
    # A network namespace the daemon made and pinned here (its network set up while the shim
    # starts): joined instead of a new one (then `new_net` is False).
    net_path: str = ""
    new_ipc: bool = True
    new_uts: bool = True
    new_pid: bool = False
    # Namespaced sysctls, already validated, written after the namespaces exist.
    sysctls: Mapping[str, str] = field(default_factory=dict)
    # A pod with its own users: /proc/<pid>/uid_map and gid_map texts of the user namespace
    # the shim creates (owning the new net/IPC/UTS namespaces), pinned at `user_pin`.
    uid_map: str = ""
    gid_map: str = ""
    user_pin: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "sandbox_id": self.sandbox_id,
                "hostname": self.hostname,
                "new_net": self.new_net,
                "net_path": self.net_path,
                "new_ipc": self.new_ipc,
                "new_uts": self.new_uts,
                "new_pid": self.new_pid,
                "sysctls": dict(self.sysctls),
                "uid_map": self.uid_map,
                "gid_map": self.gid_map,
                "user_pin": self.user_pin,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ShimSpec:
        data: dict[str, Any] = json.loads(text)
        return cls(
            sandbox_id=str(data["sandbox_id"]),
            hostname=str(data.get("hostname", "")),
            new_net=bool(data.get("new_net", True)),
            net_path=str(data.get("net_path", "")),
            new_ipc=bool(data.get("new_ipc", True)),
            new_uts=bool(data.get("new_uts", True)),
            new_pid=bool(data.get("new_pid", False)),
            sysctls={str(k): str(v) for k, v in data.get("sysctls", {}).items()},
            uid_map=str(data.get("uid_map", "")),
            gid_map=str(data.get("gid_map", "")),
            user_pin=str(data.get("user_pin", "")),
        )


def write_sysctls(sysctls: Mapping[str, str]) -> None:
    """Writes namespaced sysctls as the calling thread sees them (/proc/sys/net is its network
    namespace's, the IPC ones its IPC namespace's): the shim's, and the daemon's thread that
    makes a pod's network namespace."""
    for name, value in sysctls.items():
        try:
            with open(sysctl_path(name), "w") as f:
                f.write(value)
        except OSError as e:
            raise OSError(e.errno, f"writing sysctl {name}={value}: {e.strerror}") from None


def is_net_sysctl(name: str) -> bool:
    """Whether the sysctl belongs to the network namespace (the others here are IPC's)."""
    return sysctl_path(name).startswith("/proc/sys/net/")


def sysctl_path(name: str) -> str:
    """/proc/sys path of a sysctl; both `net.ipv4.x` and `net/ipv4/x` spellings are accepted.

    With dots, a `/` inside a component stands for a literal dot (`net.ipv4.conf.eth0/1.x`), as
    in sysctl(8).
    """
    if "/" in name and "." not in name.split("/")[0]:
        parts = name.split("/")
    else:
        parts = [p.replace("/", ".") for p in name.split(".")]
    return "/proc/sys/" + "/".join(parts)
