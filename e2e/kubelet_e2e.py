#!/usr/bin/env python3
"""kubelet v1.37 standalone (no API server) on cri-py: `make e2e-kubelet`.

Starts cri-py and kubelet with throw-away state in a temp root, runs the static pods of
e2e/kubelet/manifests, checks them through kubelet's read-only API and crictl, then stops both,
removes every pod and puts the machine back as it was (kernel sysctls kubelet changes, cgroups
under /cri-py-kubelet, the cri-pyk0 bridge) and checks that nothing is left. EVENTED_PLEG=1
turns kubelet's EventedPLEG feature gate on and checks that kubelet consumes cri-py's
GetContainerEvents stream. Each check prints PASS or FAIL; any FAIL fails the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute  # a dependency of cri-py, so in its venv

TOP = Path(__file__).resolve().parent.parent
HERE = TOP / "e2e" / "kubelet"
TOOLS = Path(os.environ.get("TOOLS_DIR", "/var/cache/cri-py/tools")) / "bin"
RESULTS = Path(os.environ.get("RESULTS_DIR", TOP / "results" / "kubelet"))
EVENTED = os.environ.get("EVENTED_PLEG", "") not in ("", "0")
# CGROUP_DRIVER=systemd (on a node whose PID 1 is systemd: e2e/systemd_node.sh): kubelet and
# cri-py both on the systemd driver; pods are kubelet's slices under kubepods.slice, containers
# cri-py's scopes.
SYSTEMD = os.environ.get("CGROUP_DRIVER", "cgroupfs") == "systemd"

NODE = "cri-py-e2e"  # --hostname-override: static pods are named <manifest name>-<node>
BRIDGE = "cri-pyk0"
SUBNET = ipaddress.ip_network("10.86.0.0/24")
CGROUP_ROOT = "cri-py-kubelet"
READ_ONLY = "http://127.0.0.1:10255"
HEALTHZ = "http://127.0.0.1:10248/healthz"
NAMESERVER = "10.86.0.53"
SEARCH = "kubelet-e2e.cri-py.test"
REGISTRY = os.environ.get("LAB_REGISTRY", "http://127.0.0.1:5000") + "/v2/"
LOCK = Path("/run/lock/cri-py-kubelet-e2e.lock")

# What kubelet's setupKernelTunables (pkg/kubelet/cm/container_manager_linux.go) sets, with
# the values it sets them to.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
PODS = ("localhost", "liveness", "limits", "onfailure")

T = TypeVar("T")


class Failed(Exception):
    """A step the rest of the run depends on did not happen."""


@dataclass
class Lab:
    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "cri" / "run" / "cri-py.sock"

    @property
    def cri_log(self) -> Path:
        return self.root / "cri-py.log"

    @property
    def kubelet_log(self) -> Path:
        return self.root / "kubelet.log"


@dataclass
class Report:
    passed: int = 0
    failed: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'}  {name}{f'  ({detail})' if detail else ''}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        return ok


def log(message: str) -> None:
    print(f"--- {message}", flush=True)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """Polls `probe` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except (OSError, ValueError, KeyError, subprocess.CalledProcessError) as e:
            last_error = f": last error {e}"
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what}{last_error}")
        time.sleep(every)


def http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


# ---------------------------------------------------------------------------------------------
# The machine: sysctls, cgroups, links, mounts


def read_sysctls() -> dict[str, int]:
    return {name: int(Path("/proc/sys", name).read_text()) for name in KUBELET_SYSCTLS}


def write_sysctls(values: dict[str, int]) -> None:
    for name, value in values.items():
        path = Path("/proc/sys", name)
        if int(path.read_text()) != value:
            path.write_text(f"{value}\n")


def cgroup_mounts() -> list[Path]:
    """Every cgroup hierarchy's mount point (v1 controllers, name=systemd, the v2 mount)."""
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mountpoint, fstype, *_ = line.split()
        if fstype in ("cgroup", "cgroup2"):
            mounts.append(Path(mountpoint))
    return mounts


def our_cgroups() -> list[Path]:
    return [m / CGROUP_ROOT for m in cgroup_mounts() if (m / CGROUP_ROOT).is_dir()]


def create_our_cgroups() -> None:
    """kubelet wants its cgroupRoot to exist in every hierarchy; cpuset children start with no
    CPUs or memory nodes, so this one gets the root's."""
    for mount in cgroup_mounts():
        top = mount / CGROUP_ROOT
        top.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (mount / name).exists() and not (top / name).read_text().strip():
                (top / name).write_text((mount / name).read_text())


def remove_our_cgroups(timeout: float = 10.0) -> list[str]:
    """Removes /cri-py-kubelet in every hierarchy, deepest first; returns what stayed."""
    deadline = time.monotonic() + timeout
    while True:
        stuck = []
        for top in our_cgroups():
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, top]:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    stuck.append(f"{d}: {e.strerror}")
        if not stuck or time.monotonic() > deadline:
            return stuck
        time.sleep(0.2)


def links() -> list[str]:
    return os.listdir("/sys/class/net")


def bridge_ports(bridge: str) -> list[str]:
    try:
        return os.listdir(f"/sys/class/net/{bridge}/brif")
    except FileNotFoundError:
        return []


def delete_link(name: str) -> None:
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)


def node_ip() -> str | None:
    """The address kubelet reports for the node when it has no --node-ip and cannot resolve
    its node name: the first IPv4 address of the default route's interface (None without
    one)."""
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            index = route.get_attr("RTA_OIF")
            if index is None:
                continue
            for addr in ipr.get_addr(family=socket.AF_INET, index=index):
                address = ipaddress.ip_address(addr.get_attr("IFA_ADDRESS"))
                # kubelet's own test of a node IP (validateNodeIP)
                unusable = address.is_loopback or address.is_link_local or address.is_multicast
                if not unusable and not address.is_unspecified:
                    return str(address)
    return None


def mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint.startswith(prefix):
            found.append(mountpoint)
    return found


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline.strip()[:120]}")
    return found


# ---------------------------------------------------------------------------------------------
# cri-py, kubelet, crictl


def fill(template: Path, out: Path, **values: str) -> None:
    out.write_text(string.Template(template.read_text()).substitute(values))


def start_cri_py(lab: Lab) -> subprocess.Popen[bytes]:
    (lab.root / "cri" / "config.d").mkdir(parents=True)
    (lab.root / "cri" / "cni").mkdir()  # empty: no CNI config, the built-in bridge is used
    fill(
        HERE / "cri-py.yaml",
        lab.root / "cri" / "config.d" / "50-kubelet-e2e.yaml",
        cni_conf_dir=str(lab.root / "cri" / "cni"),
    )
    if SYSTEMD:
        (lab.root / "cri" / "config.d" / "60-systemd.yaml").write_text(
            "cgroups:\n  driver: systemd\n"
        )
    python = os.environ.get("PYTHON", str(TOP / ".venv" / "bin" / "python"))
    flags = [
        f"--config={TOP / 'e2e' / 'lab-config.yaml'}",
        f"--config-dir={lab.root / 'cri' / 'config.d'}",
        f"--root-dir={lab.root / 'cri' / 'root'}",
        f"--run-dir={lab.root / 'cri' / 'run'}",
        f"--socket={lab.socket}",
    ]
    with lab.cri_log.open("wb") as out:
        daemon = subprocess.Popen(
            [python, "-m", "cri_py.cli", "serve", *flags],
            cwd=TOP,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches this script, which stops it
        )

    def ready() -> bool:
        if daemon.poll() is not None:
            raise Failed(f"cri-py exited with {daemon.returncode}")
        return lab.socket.exists() and crictl(lab, "version", check=False).returncode == 0

    wait_for("cri-py to answer on its socket", ready, 30, every=0.2)
    return daemon


def crictl(lab: Lab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    config = lab.root / "crictl.yaml"  # its own, so crictl neither reads nor warns about /etc's
    if not config.exists():
        endpoint = f"unix://{lab.socket}"
        config.write_text(
            f"runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n"
        )
    return subprocess.run(
        [str(TOOLS / "crictl"), f"--config={config}", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def crictl_json(lab: Lab, *args: str) -> Any:
    return json.loads(crictl(lab, *args, "-o", "json").stdout)


def kubelet_command(kubelet_dir: Path) -> list[str]:
    """kubelet and its flags, for the config start_kubelet writes in `kubelet_dir`."""
    args = [
        str(TOOLS / "kubelet"),
        f"--config={kubelet_dir / 'config.yaml'}",
        f"--root-dir={kubelet_dir / 'root'}",
        f"--cert-dir={kubelet_dir / 'pki'}",
        f"--hostname-override={NODE}",
        f"--v={os.environ.get('KUBELET_V', '2')}",
    ]
    # Without --node-ip, standalone kubelet resolves its node name (cri-py-e2e, which exists
    # nowhere) by DNS each time it builds its Node object: for every /stats/summary, pod
    # admission and status. Where DNS does not answer (a lab node container, whose Docker DNS
    # forwards to an upstream it cannot reach) each lookup costs the resolver's 2 x 5 s. The
    # address given is the one kubelet falls back to after the failed lookup (as kind, too,
    # gives its kubelets --node-ip).
    address = node_ip()
    if address:
        args.append(f"--node-ip={address}")
    if EVENTED:
        args.append("--vmodule=evented=4")
    return args


def start_kubelet(lab: Lab) -> subprocess.Popen[bytes]:
    kubelet_dir = lab.root / "kubelet"
    manifests = kubelet_dir / "manifests"
    manifests.mkdir(parents=True)
    for manifest in sorted((HERE / "manifests").glob("*.yaml")):
        shutil.copy(manifest, manifests / manifest.name)
    (kubelet_dir / "resolv.conf").write_text(f"nameserver {NAMESERVER}\nsearch {SEARCH}\n")
    fill(
        HERE / "kubelet-config.yaml",
        kubelet_dir / "config.yaml",
        socket=str(lab.socket),
        manifests=str(manifests),
        pod_logs=str(kubelet_dir / "pod-logs"),
        resolv_conf=str(kubelet_dir / "resolv.conf"),
        feature_gates="{EventedPLEG: true}" if EVENTED else "{}",
    )
    if SYSTEMD:
        # kubelet's systemd driver names its cgroups as slices from the root: kubepods.slice.
        config = (kubelet_dir / "config.yaml").read_text()
        config = config.replace("cgroupDriver: cgroupfs", "cgroupDriver: systemd")
        config = config.replace(f"cgroupRoot: /{CGROUP_ROOT}", "cgroupRoot: /")
        (kubelet_dir / "config.yaml").write_text(config)
    # kubelet writes two hard-coded host paths whatever its --root-dir:
    # /var/lib/kubelet/device-plugins/kubelet.sock (it deletes what else is in that directory,
    # such as another kubelet's socket) and /var/log/containers (log symlinks). It therefore
    # runs in its own mount namespace (a slave of the host's, so it still sees cri-py's mounts)
    # where /var/lib and /var/log are private empty tmpfs; it reads nothing else there.
    hide = " && ".join(
        f"mount -t tmpfs -o mode=0755,size=16m e2e-{name} {path}"
        for name, path in (("var-lib", "/var/lib"), ("var-log", "/var/log"))
    )
    script = f'{hide} && exec "$0" "$@"'
    args = kubelet_command(kubelet_dir)
    with lab.kubelet_log.open("wb") as out:
        kubelet = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def healthy() -> bool:
        if kubelet.poll() is not None:
            raise Failed(f"kubelet exited with {kubelet.returncode}")
        return http_get(HEALTHZ, timeout=2) == "ok"

    wait_for("kubelet /healthz", healthy, 60)
    return kubelet


def stop(process: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} still running {timeout:.0f}s after SIGTERM: SIGKILL")
        process.kill()
        process.wait(10)


# ---------------------------------------------------------------------------------------------
# What kubelet says


def kubelet_pods() -> dict[str, Any]:
    """Static pods by manifest name, from kubelet's read-only /pods."""
    pods = json.loads(http_get(f"{READ_ONLY}/pods"))["items"] or []
    suffix = f"-{NODE}"
    return {
        p["metadata"]["name"].removesuffix(suffix): p
        for p in pods
        if p["metadata"]["name"].endswith(suffix)
    }


def wait_pods(what: str, ready: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pods = kubelet_pods()
        return pods if ready(pods) else None

    return wait_for(what, probe, timeout)


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for status in pod.get("status", {}).get("containerStatuses", []):
        if status["name"] == name:
            return dict(status)
    return {}


def pod_condition(pod: dict[str, Any], kind: str) -> str:
    for condition in pod.get("status", {}).get("conditions", []):
        if condition["type"] == kind:
            return str(condition["status"])
    return ""


def crictl_containers(lab: Lab, pod: str, container: str) -> list[dict[str, Any]]:
    """The pod's containers of that name, every attempt, oldest first."""
    found = [
        c
        for c in crictl_json(lab, "ps", "-a")["containers"]
        if c["labels"].get("io.kubernetes.pod.name") == f"{pod}-{NODE}"
        and c["metadata"]["name"] == container
    ]
    return sorted(found, key=attempt)


def attempt(container: dict[str, Any]) -> int:
    return int(container["metadata"].get("attempt", 0))


def exit_code(lab: Lab, container_id: str) -> int | None:
    """None when kubelet's container GC removed it since it was listed."""
    result = crictl(lab, "inspect", "-o", "json", container_id, check=False)
    if result.returncode != 0:
        return None
    return int(json.loads(result.stdout)["status"].get("exitCode", 0))


def crictl_logs(lab: Lab, container_id: str) -> str:
    result = crictl(lab, "logs", container_id, check=False)
    return result.stdout + result.stderr


def find_cgroup(hierarchy: str, container_id: str) -> Path | None:
    if SYSTEMD:
        top = Path("/sys/fs/cgroup", hierarchy, "kubepods.slice")
        name = f"cri-py-{container_id}.scope"
    else:
        top = Path("/sys/fs/cgroup", hierarchy, CGROUP_ROOT)
        name = f"cri-py-{container_id}"
    for path in top.rglob(name):
        return path
    return None


def expected_cgroup(hierarchy: str, pod_uid: str) -> str:
    """Where the limits pod's container must be (`<id>` for its ID): kubelet's Guaranteed pod
    cgroup, then cri-py's leaf (systemd: kubepods-pod<uid>.slice, dashes as underscores)."""
    if SYSTEMD:
        pod = f"kubepods-pod{pod_uid.replace('-', '_')}.slice"
        return f"/sys/fs/cgroup/{hierarchy}/kubepods.slice/{pod}/cri-py-<id>.scope"
    return f"/sys/fs/cgroup/{hierarchy}/{CGROUP_ROOT}/kubepods/pod{pod_uid}/cri-py-<id>"


# ---------------------------------------------------------------------------------------------
# The scenario


def run_checks(lab: Lab, report: Report, sysctls_before: dict[str, int]) -> None:
    # kubelet answers /healthz before its container manager has set the tunables.
    with contextlib.suppress(Failed):
        wait_for("kubelet's kernel tunables", lambda: read_sysctls() == KUBELET_SYSCTLS, 30)
    now = read_sysctls()
    changed = {n: f"{sysctls_before[n]}->{v}" for n, v in now.items() if v != sysctls_before[n]}
    report.check(
        "kubelet applied its kernel tunables",
        now == KUBELET_SYSCTLS,
        ", ".join(f"{n.replace('/', '.')} {c}" for n, c in changed.items()) or "already set",
    )

    log("waiting for the four static pods to run")
    pods = wait_pods(
        "kubelet to report the static pods running",
        lambda p: all(p.get(n, {}).get("status", {}).get("phase") == "Running" for n in PODS),
        180,
    )
    report.check("kubelet /pods lists the four static pods running", True, ", ".join(sorted(pods)))

    # (a) two containers sharing localhost
    pods = wait_pods(
        "pod localhost to be Ready", lambda p: pod_condition(p["localhost"], "Ready") == "True", 60
    )
    localhost = pods["localhost"]
    pod_ip = localhost["status"].get("podIP", "")
    report.check(
        "localhost: both containers running, Ready=True (readiness probe over the pod IP)",
        all(
            container_status(localhost, c).get("state", {}).get("running")
            for c in ("server", "client")
        ),
        f"podIP {pod_ip}",
    )
    report.check(
        f"localhost: pod IP is on {BRIDGE} ({SUBNET})",
        bool(pod_ip) and ipaddress.ip_address(pod_ip) in SUBNET,
        pod_ip,
    )
    client = crictl_containers(lab, "localhost", "client")[-1]
    fetched = wait_for(
        "the client to fetch the server's page over 127.0.0.1",
        lambda: "hello from server" in crictl_logs(lab, client["id"]),
        30,
    )
    report.check(
        "localhost: client fetched the server's page from 127.0.0.1 (crictl logs)", fetched
    )
    resolv = crictl(lab, "exec", client["id"], "cat", "/etc/resolv.conf", check=False).stdout
    report.check(
        "localhost: pod resolv.conf comes from kubelet's resolvConf (crictl exec)",
        f"nameserver {NAMESERVER}" in resolv and SEARCH in resolv,
        resolv.strip().replace("\n", "; "),
    )
    server_log = crictl_logs(lab, crictl_containers(lab, "localhost", "server")[-1]["id"])
    report.check(
        "localhost: server logs the probe and client requests (crictl logs)",
        "GET /index.html" in server_log
        or "response:200" in server_log
        or "url:/index.html" in server_log,
        f"{len(server_log.splitlines())} lines",
    )

    # (c) cpu/memory limits in the container's cgroup
    limits = pods["limits"]
    uid = limits["metadata"]["uid"]
    limited = crictl_containers(lab, "limits", "limited")[-1]
    report.check(
        "limits: QoS class Guaranteed",
        limits["status"].get("qosClass") == "Guaranteed",
        limits["status"].get("qosClass", ""),
    )
    expected = {
        ("cpu", "cpu.shares"): "512",
        ("cpu", "cpu.cfs_quota_us"): "50000",
        ("cpu", "cpu.cfs_period_us"): "100000",
        ("memory", "memory.limit_in_bytes"): str(64 * 1024 * 1024),
    }
    for (hierarchy, name), value in expected.items():
        cgroup = find_cgroup(hierarchy, limited["id"])
        actual = (cgroup / name).read_text().strip() if cgroup else "no cgroup"
        where = expected_cgroup(hierarchy, uid)
        report.check(
            f"limits: {name} = {value}",
            cgroup == Path(where.replace("<id>", limited["id"])) and actual == value,
            f"{actual} in {cgroup}",
        )
    memory_cgroup = find_cgroup("memory", limited["id"])
    procs = (memory_cgroup / "cgroup.procs").read_text().split() if memory_cgroup else []
    report.check(
        "limits: the container's processes are in that cgroup",
        bool(procs),
        f"pids {' '.join(procs)}",
    )
    if SYSTEMD:
        unit = f"cri-py-{limited['id']}.scope"
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        wanted = (
            {"MemoryMax": str(64 * 1024 * 1024), "CPUWeight": "20"}
            if v2
            else {"MemoryLimit": str(64 * 1024 * 1024), "CPUShares": "512"}
        )
        wanted.update(CPUQuotaPerSecUSec="500ms", Delegate="yes", ActiveState="active")
        shown = systemd_properties(unit, list(wanted))
        report.check(
            f"limits: the container's unit {unit[:20]}... carries them (systemctl show)",
            shown == wanted,
            " ".join(f"{k}={v}" for k, v in shown.items()),
        )

    # (b) liveness probe that starts failing: kubelet restarts the container
    log("waiting for kubelet to restart the liveness container")
    pods = wait_pods(
        "a liveness restart",
        lambda p: container_status(p["liveness"], "probed").get("restartCount", 0) >= 1,
        90,
    )
    probed = container_status(pods["liveness"], "probed")
    report.check(
        "liveness: restartCount went up after the probe failed",
        probed.get("restartCount", 0) >= 1,
        f"restartCount {probed.get('restartCount')}, "
        f"lastState {json.dumps(probed.get('lastState', {}).get('terminated', {}).get('reason'))}",
    )
    # kubelet keeps one dead container per container (its container GC), so crictl shows the
    # current attempt and the one before it.
    attempts = crictl_containers(lab, "liveness", "probed")
    exited = [c for c in attempts if c["state"] == "CONTAINER_EXITED"]
    report.check(
        "liveness: crictl ps -a: the attempt number follows restartCount, an old attempt exited",
        bool(exited) and attempt(attempts[-1]) >= probed.get("restartCount", 0) >= 1,
        ", ".join(f"attempt {attempt(c)} {c['state']}" for c in attempts),
    )
    old_log = crictl_logs(lab, exited[0]["id"]) if exited else ""
    report.check(
        "liveness: the exited attempt's log shows it turned unhealthy (crictl logs)",
        "started at" in old_log and "now unhealthy" in old_log,
        old_log.strip().replace("\n", "; ")[:100],
    )
    kubelet_log = lab.kubelet_log.read_text(errors="replace")
    report.check(
        "liveness: kubelet logged the failed liveness probe",
        "failed liveness probe" in kubelet_log,
    )

    # (d) non-zero exit under restartPolicy OnFailure
    log("waiting for the OnFailure container's second restart (crash-loop back-off)")
    pods = wait_pods(
        "two OnFailure restarts",
        lambda p: container_status(p["onfailure"], "failing").get("restartCount", 0) >= 2,
        120,
    )
    failing = container_status(pods["onfailure"], "failing")
    terminated = failing.get("lastState", {}).get("terminated", {})
    report.check(
        "onfailure: restarted after exiting 3 (restartCount >= 2, lastState exit code 3)",
        failing.get("restartCount", 0) >= 2 and terminated.get("exitCode") == 3,
        f"restartCount {failing.get('restartCount')}, lastState exitCode "
        f"{terminated.get('exitCode')} reason {terminated.get('reason')}",
    )
    attempts = crictl_containers(lab, "onfailure", "failing")
    exited = [c for c in attempts if c["state"] == "CONTAINER_EXITED"]
    codes = {c["id"]: exit_code(lab, c["id"]) for c in exited}
    report.check(
        "onfailure: crictl ps -a: attempt >= 2, exited attempts with exit code 3 (inspect)",
        bool(exited)
        and {code for code in codes.values() if code is not None} == {3}
        and attempt(attempts[-1]) >= 2,
        ", ".join(
            f"attempt {attempt(c)} {c['state']}"
            + (f" exit {codes[c['id']]}" if c in exited else "")
            for c in attempts
        ),
    )
    report.check(
        "onfailure: each attempt logged its lines (crictl logs)",
        all("exiting 3" in crictl_logs(lab, c["id"]) for c in exited),
    )

    # /stats/summary: cpu and memory of the running containers
    log("waiting for /stats/summary to show cpu and memory usage")

    def summary_ready() -> dict[str, Any] | None:
        summary = json.loads(http_get(f"{READ_ONLY}/stats/summary"))
        by_pod = {s["podRef"]["name"].removesuffix(f"-{NODE}"): s for s in summary.get("pods", [])}
        # kubelet's summary shows a pod through its running containers: onfailure's only
        # runs two seconds at a time, so it is not waited for.
        if not {"localhost", "limits", "liveness"} <= set(by_pod):
            return None
        wanted = {"localhost": ("server", "client"), "limits": ("limited",)}
        for pod, containers in wanted.items():
            stats = {c["name"]: c for c in by_pod.get(pod, {}).get("containers", [])}
            for name in containers:
                c = stats.get(name, {})
                if not (
                    c.get("cpu", {}).get("usageCoreNanoSeconds", 0) > 0
                    and c.get("cpu", {}).get("usageNanoCores", 0) > 0
                    and c.get("memory", {}).get("workingSetBytes", 0) > 0
                ):
                    return None
        return by_pod

    try:
        by_pod = wait_for("cpu and memory stats", summary_ready, 60, every=2)
        limited_stats = next(c for c in by_pod["limits"]["containers"] if c["name"] == "limited")
        report.check(
            "/stats/summary: the pods with running containers, their cpu and memory usage",
            True,
            f"pods {', '.join(sorted(by_pod))}; limited: "
            f"{limited_stats['cpu']['usageNanoCores']} nanocores, "
            f"{limited_stats['memory']['workingSetBytes']} B working set",
        )
    except Failed as e:
        try:
            summary = http_get(f"{READ_ONLY}/stats/summary")
        except OSError as error:  # no answer at all: say so rather than end the scenario
            summary = f"(no answer: {error!r})"
        report.check(
            "/stats/summary: the pods with running containers, their cpu and memory usage",
            False,
            f"{e}; summary: {summary[:600]}",
        )

    if EVENTED:
        check_evented_pleg(lab, report)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def check_evented_pleg(lab: Lab, report: Report) -> None:
    metrics = http_get(f"{READ_ONLY}/metrics")
    connected = metric(metrics, "kubelet_evented_pleg_connection_success_count")
    errors = metric(metrics, "kubelet_evented_pleg_connection_error_count")
    events = metric(metrics, "kubelet_evented_pleg_connection_latency_seconds_count")
    report.check(
        "evented PLEG: kubelet holds a GetContainerEvents stream and receives events (metrics)",
        connected >= 1 and errors == 0 and events > 0,
        f"connections {connected:.0f}, errors {errors:.0f}, events {events:.0f}",
    )
    relists = len(
        re.findall(
            r"Evented PLEG: requested pod relist after container termination",
            lab.kubelet_log.read_text(errors="replace"),
        )
    )
    report.check(
        "evented PLEG: container terminations made kubelet relist pods (kubelet log)",
        relists > 0,
        f"{relists} relists requested",
    )


# ---------------------------------------------------------------------------------------------
# Setup and teardown


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def exclusive_lock(timeout: float = 1800) -> Iterator[None]:
    """One run at a time on a machine: they share the bridge, the cgroup root and ports."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a+") as f:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    f.seek(0)
                    log(f"another e2e-kubelet run holds {LOCK} (pid {f.read().strip()}): waiting")
                    waiting = True
                if time.monotonic() > deadline:
                    raise Failed(f"{LOCK} still held after {timeout:.0f}s") from None
                time.sleep(2)
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def preflight(report: Report) -> None:
    if os.geteuid() != 0:
        raise Failed("must run as root (kubelet and cri-py need it)")
    for tool in ("kubelet", "crictl"):
        if not (TOOLS / tool).is_file():
            raise Failed(f"{TOOLS / tool} missing: run `make tools`")
    try:
        http_get(REGISTRY, timeout=5)
    except (OSError, urllib.error.URLError) as e:
        raise Failed(f"lab registry not answering ({e}): run `make registry images`") from None
    busy = []
    for url in (HEALTHZ, f"{READ_ONLY}/healthz"):
        with contextlib.suppress(OSError):
            http_get(url, timeout=2)
            busy.append(url)
    if busy:
        raise Failed(f"another kubelet answers on {', '.join(busy)}")
    if BRIDGE in links():
        raise Failed(f"bridge {BRIDGE} exists: a previous run left it (ip link del {BRIDGE})")
    stale = remove_our_cgroups(timeout=1)
    if stale:
        raise Failed(f"cgroups of a previous run are still in use: {stale}")


def teardown(
    lab: Lab,
    report: Report,
    kubelet: subprocess.Popen[bytes] | None,
    daemon: subprocess.Popen[bytes] | None,
    sysctls_before: dict[str, int] | None,
    owned: bool,
) -> None:
    """Stops what this run started. The bridge and cgroups are only touched when this run
    holds the lock and passed preflight (`owned`): they may be another run's otherwise."""
    log("teardown")
    if report.failed and daemon is not None and daemon.poll() is None:
        print(crictl(lab, "ps", "-a", check=False).stdout, flush=True)  # for the post-mortem
    steps: list[tuple[str, Callable[[], None]]] = []
    if kubelet is not None:
        steps.append(("stop kubelet", lambda: stop(kubelet, "kubelet", 30)))
    if daemon is not None and daemon.poll() is None:
        steps.append(("remove every pod (crictl rmp -fa)", lambda: remove_pods(lab)))
        steps.append(("stop cri-py", lambda: stop(daemon, "cri-py", 30)))
    if sysctls_before is not None:
        steps.append(("restore sysctls", lambda: write_sysctls(sysctls_before)))
    for name, step in steps:
        try:
            step()
        except Exception as e:  # every step runs, whatever the others did
            report.check(f"teardown: {name}", False, repr(e))

    if sysctls_before is not None:
        now = read_sysctls()
        report.check(
            "teardown: kernel sysctls restored",
            now == sysctls_before,
            ", ".join(f"{n.replace('/', '.')}={v}" for n, v in now.items()),
        )
    if not owned:
        return
    veths = bridge_ports(BRIDGE)
    report.check(f"teardown: no veth left on {BRIDGE}", not veths, " ".join(veths))
    if BRIDGE in links():
        delete_link(BRIDGE)
    report.check(f"teardown: bridge {BRIDGE} deleted", BRIDGE not in links())
    stuck = remove_our_cgroups()
    report.check(
        f"teardown: /{CGROUP_ROOT} cgroups removed in every hierarchy",
        not stuck,
        "; ".join(stuck[:5]),
    )
    if SYSTEMD:
        units = cri_py_units()
        report.check("teardown: no cri-py systemd unit left", not units, " ".join(units[:5]))
    mounts = mounts_under(lab.root)
    report.check("teardown: no mount left under the temp root", not mounts, " ".join(mounts[:5]))
    procs = processes_mentioning(str(lab.root))
    report.check(
        "teardown: no process of the run left (shims, containers)", not procs, "; ".join(procs[:5])
    )


def systemd_properties(unit: str, names: list[str]) -> dict[str, str]:
    args = ["systemctl", "show", unit, *(f"--property={n}" for n in names)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def cri_py_units() -> list[str]:
    """cri-py's loaded container scopes and pod slices (the shims' scope aside)."""
    args = ["systemctl", "list-units", "--all", "--plain", "--no-legend", "cri-py-*"]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    return [n for n in names if n != "cri-py-shims.scope"]


def remove_pods(lab: Lab) -> None:
    result = crictl(lab, "rmp", "--force", "--all", check=False)
    left = crictl(lab, "pods", "-q").stdout.split()
    if result.returncode != 0 or left:
        raise Failed(f"crictl rmp -fa: {result.stderr.strip()}; pods left: {left}")


def save_logs(lab: Lab, failed: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for path in (lab.kubelet_log, lab.cri_log):
        if path.exists():
            shutil.copy(path, RESULTS / path.name)
            if failed:
                print(f"\n===== last 40 lines of {path.name} =====")
                lines = path.read_text(errors="replace").splitlines()
                print("\n".join(lines[-40:]))
    print(f"logs: {RESULTS}/kubelet.log, {RESULTS}/cri-py.log")


def main() -> int:
    started = time.monotonic()
    report = Report()
    print(f"kubelet e2e{' (EventedPLEG)' if EVENTED else ''}: kubelet standalone on cri-py")
    lab = Lab(Path(tempfile.mkdtemp(prefix="cri-py-kubelet.", dir="/tmp")))
    kubelet = daemon = None
    sysctls_before = None
    owned = False
    with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock())
            started = time.monotonic()  # the run's own time, not the wait for another's
            preflight(report)
            owned = True
            sysctls_before = read_sysctls()
            (lab.root / "sysctls-before.json").write_text(json.dumps(sysctls_before))
            create_our_cgroups()
            log(f"sysctls before: {sysctls_before}")
            log(f"starting cri-py (state in {lab.root})")
            daemon = start_cri_py(lab)
            log("starting kubelet")
            kubelet = start_kubelet(lab)
            report.check("kubelet is healthy on 127.0.0.1:10248", True)
            run_checks(lab, report, sysctls_before)
        except Failed as e:
            report.check("scenario ran to the end", False, str(e))
        except Exception as e:  # a bug here or a surprise from kubelet: still tear down
            traceback.print_exc()
            report.check("scenario ran to the end", False, repr(e))
        except KeyboardInterrupt as e:
            report.check("scenario ran to the end", False, f"interrupted ({e})")
        finally:
            teardown(lab, report, kubelet, daemon, sysctls_before, owned)
            save_logs(lab, bool(report.failed))
            if mounts_under(lab.root):  # never delete through a mount into other files
                print(f"{lab.root} kept: mounts are left under it")
            else:
                shutil.rmtree(lab.root, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"\nkubelet e2e: {report.passed} passed, {len(report.failed)} failed in {elapsed:.0f}s")
    for name in report.failed:
        print(f"  FAILED: {name}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
