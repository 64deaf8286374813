"""The runtimes under test: start, find their processes, measure them, stop and clean up.

Each runtime runs with state of its own (root, run dir, socket) under /var/lib/cri-py-bench and
/run/cri-py-bench, the same CNI conflist (the bridge plugin on `ctrb0`, 10.84.0.0/22) and the
lab registry as mirror. Each daemon is put in a cpuacct cgroup of its own under /cri-py-bench
so that the CPU time it and its shims spend is counted even after a shim has exited; pods use
cgroup parents under /cri-py-bench too. Everything is stopped by PID and removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cri_py.api import api_pb2 as pb  # noqa: E402
from cri_py.api import api_pb2_grpc as pb_grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Shared with e2e/node_e2e.sh (containerd as the node e2e baseline).
from baseline import (  # noqa: E402
    CNI_BIN_DIR,
    MIRRORED_HOSTS,
    PAUSE_IMAGE,  # noqa: F401  (compare.py and profile.py take it from here)
    REGISTRY,
    cni_conflist,
    containerd_config,
    install_apt_packages,
    installed,
)

STATE = Path("/var/lib/cri-py-bench")
RUN = Path("/run/cri-py-bench")
CGROUP_ROOT = "/cri-py-bench"
CNI_DIR = STATE / "cni"
BRIDGE = "ctrb0"
SUBNET = "10.84.0.0/22"  # 1022 addresses: the scale scenario runs 500 pods and 5 more
CGROUP_FS = Path("/sys/fs/cgroup")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# The bridge plugin turns the host's IPv4 forwarding on for a gateway bridge; the bench puts it
# back. The value before the first run is kept in RUN, so cleanup after a crashed run restores it.
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP_FORWARD_SAVED = RUN / "host-ip_forward"


def write_cni_conflist() -> None:
    """One conflist for both runtimes: the bridge plugin, host-local IPAM, no iptables."""
    RUN.mkdir(parents=True, exist_ok=True)
    if not IP_FORWARD_SAVED.exists():
        IP_FORWARD_SAVED.write_text(IP_FORWARD.read_text())
    CNI_DIR.mkdir(parents=True, exist_ok=True)
    conflist = cni_conflist("cri-py-bench", BRIDGE, SUBNET, str(RUN / "cni-ipam"))
    (CNI_DIR / "10-cri-py-bench.conflist").write_text(json.dumps(conflist, indent=2) + "\n")


# --- cgroups (v1 hierarchies as on these machines; a v2 mount is handled alike) ---


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy that has a cgroup.procs at its root."""
    found = []
    for entry in sorted(CGROUP_FS.iterdir()):
        if entry.is_symlink() or not (entry / "cgroup.procs").exists():
            continue
        found.append(entry)
    return found


def cpuacct_dir(cgroup: str) -> Path:
    for name in ("cpuacct", "cpu,cpuacct"):
        if (CGROUP_FS / name / "cpuacct.usage").exists():
            return CGROUP_FS / name / cgroup.lstrip("/")
    raise RuntimeError("no cpuacct hierarchy mounted")


def make_cgroup(cgroup: str, everywhere: bool) -> None:
    """Creates `cgroup` in the cpuacct hierarchy, or in all of them (a shim cgroup must exist
    in each one containerd's cgroup library loads)."""
    tops = hierarchies() if everywhere else [cpuacct_dir("/")]
    parts = [p for p in cgroup.split("/") if p]
    for top in tops:
        d = top
        for part in parts:
            d = d / part
            d.mkdir(exist_ok=True)
            # cpuset v1 children start empty, and a task cannot join an empty cpuset.
            for key in ("cpuset.cpus", "cpuset.mems"):
                if (d / key).exists() and not (d / key).read_text().strip():
                    (d / key).write_text((d.parent / key).read_text())


def cpu_seconds(cgroup: str) -> float:
    """CPU time of every task that ever ran in `cgroup` (exited ones included); 0 before the
    cgroup exists."""
    try:
        return int((cpuacct_dir(cgroup) / "cpuacct.usage").read_text()) / 1e9
    except FileNotFoundError:
        return 0.0


def remove_cgroup_tree(cgroup: str) -> list[str]:
    """rmdir `cgroup` and everything below it, bottom up, in every hierarchy; returns the
    directories that could not be removed (a process still in them)."""
    left = []
    for h in hierarchies():
        top = h / cgroup.lstrip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                left.append(dirpath)
    return left


# --- processes ---


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    cmdline: str


def processes() -> dict[int, Proc]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        found[int(entry)] = Proc(int(entry), ppid, comm, cmdline.decode(errors="replace"))
    return found


def descendants(roots: list[int], procs: dict[int, Proc]) -> list[int]:
    """The roots and their descendants, each once (cri-py's shims are both roots and the shim
    template's children)."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: list[int] = []
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def smaps_kb(pid: int, key: str) -> int:
    """A field of /proc/<pid>/smaps_rollup in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- the runtimes ---

# Processes that are the workload (the containers' own), not the runtime.
WORKLOAD_COMMS = frozenset({"sh", "sleep", "echo"})


@dataclass
class Runtime:
    name: str
    socket: Path
    cgroup: str  # cpuacct cgroup of the daemon (and, for cri-py, its shims)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_cgroups: list[str] = field(default_factory=list)  # also counted for CPU
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def pod_cgroup_parent(self) -> str:
        return f"{CGROUP_ROOT}/pods-{self.name}"

    def channel(self) -> grpc.Channel:
        """One connection for the runtime's life, as kubelet keeps one. A channel made per use
        would time a connection's setup in the first call on it (~0.4 ms more, both runtimes)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        return self._channel

    def drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def runtime_stub(self) -> pb_grpc.RuntimeServiceStub:
        return pb_grpc.RuntimeServiceStub(self.channel())

    def image_stub(self) -> pb_grpc.ImageServiceStub:
        return pb_grpc.ImageServiceStub(self.channel())

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        raise NotImplementedError

    def shim_pids(self, procs: dict[int, Proc]) -> list[int]:
        raise NotImplementedError

    def pod_processes(self) -> list[int]:
        """Every per-pod runtime process: shims and what they forked, less the workload."""
        procs = processes()
        pids = descendants(self.shim_pids(procs), procs)
        return [p for p in pids if procs.get(p) and procs[p].comm not in WORKLOAD_COMMS]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(c) for c in [self.cgroup, *self.extra_cgroups])

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        stub = self.runtime_stub()
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                stub.Version(pb.VersionRequest(), timeout=1)
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not serve within {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def launch(
        self, args: list[str], env: dict[str, str] | None = None, cwd: Path = Path("/")
    ) -> None:
        assert self.log_path is not None
        make_cgroup(self.cgroup, everywhere=False)
        procs_file = cpuacct_dir(self.cgroup) / "cgroup.procs"

        def join_cgroup() -> None:  # in the child, before exec: the daemon starts there
            procs_file.write_text(str(os.getpid()))

        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=join_cgroup,
                start_new_session=True,
                env=env,
                cwd=cwd,  # `python -m` puts the cwd first on sys.path
            )
        self.drop_channel()  # a channel to the last start would wait out its reconnect backoff
        self.wait_serving()

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL; then every shim left (by PID) and their children."""
        self.drop_channel()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        procs = processes()
        for pid in reversed(descendants(self.shim_pids(procs), procs)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class CriPy(Runtime):
    def __init__(self, source: Path = ROOT, name: str = "cri-py") -> None:
        """`source`: the tree whose cri_py to run (another checkout, to compare versions)."""
        super().__init__(name, RUN / name / "cri-py.sock", f"{CGROUP_ROOT}/{name}")
        self.base = STATE / name
        self.source = source
        # Versions with `cgroups.shim_cgroup` move shims out of the daemon's cgroup once they
        # run: into one under ours, counted too.
        self.shim_cgroup = ""
        config_py = (source / "cri_py" / "config.py").read_text()
        self.builtin_switch = "builtin:" in config_py
        if "shim_cgroup:" in config_py:
            self.shim_cgroup = f"{CGROUP_ROOT}/{name}-shims"
            self.extra_cgroups.append(self.shim_cgroup)

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.yaml"
        lines = ["registries:"]
        for host in MIRRORED_HOSTS:
            lines += [f"  {host}:", f'    mirrors: ["{REGISTRY}/{host}"]']
        lines += [
            "network:",
            # CNI only, as containerd: the built-in bridge (cri-py0) would be made at start and
            # outlive the bench on the host (an older tree without the switch still makes it).
            *(["  builtin: false"] if self.builtin_switch else []),
            f"  cni_conf_dir: {CNI_DIR}",
            f"  cni_bin_dirs: [{CNI_BIN_DIR}]",
            "cgroups:",
            f"  default_parent: {self.pod_cgroup_parent}",
            *([f"  shim_cgroup: {self.shim_cgroup}"] if self.shim_cgroup else []),
            "log_level: info",
        ]
        config.write_text("\n".join(lines) + "\n")
        self.log_path = self.base / "daemon.log"
        self.launch(
            [
                sys.executable,
                "-m",
                "cri_py.cli",
                "serve",
                "--config",
                str(config),
                "--config-dir",
                str(self.base / "config.d"),
                "--root-dir",
                str(self.base / "root"),
                "--run-dir",
                str(self.socket.parent),
                "--socket",
                str(self.socket),
            ],
            env={**os.environ, "PYTHONPATH": str(self.source)},
            cwd=self.source,
        )

    def shim_pids(self, procs: dict[int, Proc]) -> list[int]:
        """The pods' shims, and the shim template (zygote) the daemon forks them from when it
        has one: not per pod, but a runtime process other than the daemon, so counted."""
        run_dir = str(self.socket.parent) + "/"
        return [
            p.pid
            for p in procs.values()
            if ("cri_py.shim" in p.cmdline and run_dir in p.cmdline)
            or ("cri_py.shim.zygote" in p.cmdline and p.ppid == self.pid)
        ]


class Containerd(Runtime):
    SHIM_CGROUP = f"{CGROUP_ROOT}/shim"

    def __init__(self) -> None:
        super().__init__(
            "containerd",
            RUN / "containerd" / "containerd.sock",
            f"{CGROUP_ROOT}/containerd",
            extra_cgroups=[self.SHIM_CGROUP],
        )
        self.base = STATE / "containerd"

    def config_toml(self) -> str:
        return containerd_config(
            root=str(self.base / "root"),
            state=str(RUN / "containerd"),
            socket=str(self.socket),
            cni_conf_dir=str(CNI_DIR),
            shim_cgroup=self.SHIM_CGROUP,
        )

    def start(self) -> None:
        if not installed():
            install_apt_packages()
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(self.config_toml())
        make_cgroup(self.SHIM_CGROUP, everywhere=True)
        self.log_path = self.base / "containerd.log"
        self.launch(["containerd", "--config", str(config)])

    def shim_pids(self, procs: dict[int, Proc]) -> list[int]:
        address = f"-address {self.socket}"
        return [
            p.pid
            for p in procs.values()
            if p.comm.startswith("containerd-shim") and address in p.cmdline
        ]


NETNS_DIR = Path("/var/run/netns")


def netns_names() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except OSError:
        return set()


def cleanup_host(netns_before: set[str] | None = None) -> list[str]:
    """Mounts, network namespaces, the bridge, cgroups and state the bench left; returns what
    could not be removed. `netns_before`: the named netns that existed before containerd ran
    (it pins pods' netns as /var/run/netns/cni-*; new ones left behind are ours)."""
    problems = []
    if netns_before is not None:
        for name in sorted(netns_names() - netns_before):
            if name.startswith("cni-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith((str(STATE), str(RUN)))
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    problems += remove_cgroup_tree(CGROUP_ROOT)
    with contextlib.suppress(FileNotFoundError):
        saved = IP_FORWARD_SAVED.read_text()
        if IP_FORWARD.read_text() != saved:
            IP_FORWARD.write_text(saved)
    for d in (RUN, STATE):
        try:
            shutil.rmtree(d)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"{d}: {e}")
    return problems
