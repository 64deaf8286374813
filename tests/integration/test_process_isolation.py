"""What a container's processes start with, against a real daemon (issue 17, items 3-6): default
signal actions and an empty mask in the init and in every exec, an exec confined as the init
(its oom_score_adj, 0 included, and its cgroup), setup processes that a container cannot reach
(non-dumpable until execve, the bounding set cut), a setup that times out leaving nothing
behind, and pod files a non-root container can read, with DNS through them.

The daemon runs with oom_score_adj -999, as under its systemd unit (or +300 where this root
lacks CAP_SYS_RESOURCE and cannot lower a score): a container process that kept it would
show. Pods run on test_containers' bridge (`cri-pyt1`, 10.95.0.0/24); the DNS server the pods
use listens on that bridge's address only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode
from cri_py.runtime.cgroups import LEAF_PREFIX

from .conftest import needs_root
from .test_containers import BUSYBOX, CGROUP_PARENT, CONFIG, Lab, open_lab

pytestmark = needs_root

# The systemd unit's; the fallback where a score cannot be lowered below 0.
DAEMON_OOM_SCORE_ADJ = (-999, 300)
BRIDGE = "cri-pyt1"
# CapBnd of the default 14 capabilities (as test_security's DEFAULT_CAPS).
DEFAULT_CAPS = 0xA80425FB
SIGKILL_BIT = 1 << (9 - 1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """test_containers' lab, with a daemon started at oom_score_adj -999 or +300 and SIGQUIT
    ignored, as a daemon started in the background by a script has it (it and its shims
    inherit both from this process, whose own are put back at once)."""
    own = Path("/proc/self/oom_score_adj")
    before = own.read_text().strip()
    for score in DAEMON_OOM_SCORE_ADJ:
        with contextlib.suppress(PermissionError):
            own.write_text(str(score))
            break
    quit_handler = signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    try:
        opened = open_lab(tmp_path_factory.mktemp("isolation"), CONFIG)
        lab = opened.__enter__()
    finally:
        signal.signal(signal.SIGQUIT, quit_handler)
        own.write_text(before)
    ignored = int(proc_status(lab.daemon.process.pid)["SigIgn"], 16)
    assert ignored & (1 << (signal.SIGQUIT - 1))
    daemon_score = int(Path(f"/proc/{lab.daemon.process.pid}/oom_score_adj").read_text())
    assert daemon_score in DAEMON_OOM_SCORE_ADJ
    try:
        yield lab
    finally:
        opened.__exit__(None, None, None)


def run_pod(lab: Lab, name: str, pid_mode: int = 1, dns: pb.DNSConfig | None = None) -> str:
    return lab.run_pod(name, pid_mode, dns=dns, namespace="isolation")


def create(
    lab: Lab,
    sandbox_id: str,
    name: str,
    command: list[str],
    *,
    pid_mode: int = 1,
    run_as_user: int | None = None,
    add_capabilities: tuple[str, ...] = (),
    oom_score_adj: int = 0,
    stop_signal: str = "",
    working_dir: str = "",
    seccomp: pb.SecurityProfile | None = None,
    timeout: float = 30,
) -> str:
    security = pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pid_mode)  # type: ignore[arg-type]
    )
    if run_as_user is not None:
        security.run_as_user.value = run_as_user
    security.capabilities.add_capabilities.extend(add_capabilities)
    if seccomp is not None:
        security.seccomp.CopyFrom(seccomp)
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=command,
        working_dir=working_dir,
        log_path=f"{name}.log",
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(oom_score_adj=oom_score_adj),
            security_context=security,
        ),
    )
    if stop_signal:
        config.stop_signal = pb.Signal.Value(f"SIGNAL_{stop_signal}")  # type: ignore[assignment]
    return (
        lab.daemon.runtime()
        .CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=lab.configs[sandbox_id]
            ),
            timeout=timeout,
        )
        .container_id
    )


def host_pid(lab: Lab, container_id: str) -> int:
    """The container's init as the host sees it (ContainerStatus's verbose info)."""
    status = lab.daemon.runtime().ContainerStatus(
        pb.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=10
    )
    return int(json.loads(status.info["info"])["pid"])


def status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def proc_status(pid: int) -> dict[str, str]:
    return status_fields(Path(f"/proc/{pid}/status").read_text())


def exec_ok(lab: Lab, container_id: str, *cmd: str) -> str:
    reply = lab.exec(container_id, *cmd)
    assert reply.exit_code == 0, (cmd, reply.stderr)
    return reply.stdout.decode()


def test_signals_are_at_their_defaults_in_the_init_and_in_an_exec(lab: Lab) -> None:
    pod = run_pod(lab, "signals")
    cid = create(lab, pod, "sleeper", ["sleep", "1000"])
    lab.start(cid)
    init = status_fields(exec_ok(lab, cid, "cat", "/proc/1/status"))
    assert (init["SigIgn"], init["SigBlk"]) == ("0" * 16, "0" * 16)
    own = status_fields(exec_ok(lab, cid, "cat", "/proc/self/status"))
    assert (own["SigIgn"], own["SigBlk"]) == ("0" * 16, "0" * 16)
    # SIGPIPE at its default: seq dies quietly when head has what it wants.
    reply = lab.exec(cid, "sh", "-c", "seq 1 99999 | head -1")
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"1\n", b"", 0)
    piped = create(lab, pod, "piped", ["sh", "-c", "seq 1 99999 | head -1"])
    lab.start(piped)
    assert lab.wait_exited(piped).exit_code == 0
    log = (Path(lab.configs[pod].log_directory) / "piped.log").read_text()
    assert [line.split(" ", 3)[1:] for line in log.splitlines()] == [["stdout", "F", "1"]]
    lab.remove_pod(pod)


def test_a_sigquit_stop_signal_stops_a_container_at_once(lab: Lab) -> None:
    # In the pod's PID namespace the sleep is not a namespace's init, so a signal's default
    # action applies to it (SIGQUIT: it ends, dumping core).
    pod = run_pod(lab, "quit", pid_mode=0)
    cid = create(lab, pod, "quitter", ["sleep", "1000"], pid_mode=0, stop_signal="SIGQUIT")
    lab.start(cid)
    lab.daemon.runtime().StopContainer(
        pb.StopContainerRequest(container_id=cid, timeout=20), timeout=60
    )
    # 131: ended by SIGQUIT itself; an ignored SIGQUIT would end in the SIGKILL after 20 s (137).
    status = lab.status(cid)
    assert (status.state, status.exit_code) == (pb.CONTAINER_EXITED, 128 + 3)
    lab.remove_pod(pod)


def test_an_exec_gets_the_containers_oom_score_adj_and_cgroup(lab: Lab) -> None:
    pod = run_pod(lab, "oom")
    # The daemon has -999 (or 300): 0 must be set, not skipped.
    for name, score in (("zero", 0), ("raised", 500)):
        cid = create(lab, pod, name, ["sleep", "1000"], oom_score_adj=score)
        lab.start(cid)
        pid = host_pid(lab, cid)
        assert Path(f"/proc/{pid}/oom_score_adj").read_text() == f"{score}\n"
        assert exec_ok(lab, cid, "cat", "/proc/self/oom_score_adj") == f"{score}\n"
        # No cgroup namespace: the exec'd process shows the host's paths, as the init does.
        cgroups = exec_ok(lab, cid, "cat", "/proc/self/cgroup")
        assert cgroups == Path(f"/proc/{pid}/cgroup").read_text()
        assert f"{LEAF_PREFIX}{cid}" in cgroups
    lab.remove_pod(pod)


def shim_pid(lab: Lab, sandbox_id: str) -> int:
    status = lab.daemon.runtime().PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True), timeout=10
    )
    return int(json.loads(status.info["info"])["pid"])


def test_an_init_in_a_pid_namespace_of_its_own_is_forked_there_by_the_shim(lab: Lab) -> None:
    """A container with its own PID namespace (kubelet's default): its init is PID 1 there,
    forked by the pod's shim straight into it, no setup process left between them; each
    container gets a namespace of its own, and the shim's own children stay in the host's."""
    pod = run_pod(lab, "own-pid")
    inits = [host_pid(lab, create(lab, pod, name, ["sleep", "1000"])) for name in ("a", "b")]
    shim = shim_pid(lab, pod)
    for pid in inits:
        fields = proc_status(pid)
        assert fields["NSpid"].split()[1:] == ["1"]  # the host's PID, then 1 in its own
        assert int(fields["PPid"]) == shim
    namespaces = {os.readlink(f"/proc/{pid}/ns/pid") for pid in inits}
    assert len(namespaces) == 2
    host = os.readlink("/proc/self/ns/pid")
    assert host not in namespaces
    assert os.readlink(f"/proc/{shim}/ns/pid_for_children") == host
    lab.remove_pod(pod)


def test_a_setup_process_cannot_be_reached_from_a_container(lab: Lab) -> None:
    """A created (not started) container's init waits before execve, already its user. A
    container of the same user in the same PID namespace can neither read its environment nor
    its executable (the host's Python); once it has exec'd, it can (dumpable again)."""
    pod = run_pod(lab, "reach", pid_mode=0)
    sibling = create(lab, pod, "sibling", ["sleep", "1000"], pid_mode=0, run_as_user=1000)
    lab.start(sibling)
    waiting = create(lab, pod, "waiting", ["sleep", "1000"], pid_mode=0, run_as_user=1000)
    pid = host_pid(lab, waiting)
    fields = proc_status(pid)
    assert fields["Uid"].split()[:2] == ["1000", "1000"]
    # Non-dumpable: its /proc files belong to root, not to its user.
    assert os.stat(f"/proc/{pid}/environ").st_uid == 0
    assert int(fields["CapBnd"], 16) == DEFAULT_CAPS
    # The process that forked it into the pod's PID namespace (it waits for it) was cut too.
    parent = proc_status(int(fields["PPid"]))
    assert int(parent["CapBnd"], 16) == DEFAULT_CAPS
    in_pod = fields["NSpid"].split()[-1]
    environ = lab.exec(sibling, "cat", f"/proc/{in_pod}/environ")
    assert environ.exit_code != 0 and b"denied" in environ.stderr.lower()
    exe = lab.exec(sibling, "readlink", f"/proc/{in_pod}/exe")
    assert exe.exit_code != 0 and exe.stdout == b""
    lab.start(waiting)
    assert os.stat(f"/proc/{pid}/environ").st_uid == 1000
    assert "PATH=" in exec_ok(lab, sibling, "cat", f"/proc/{in_pod}/environ")
    assert exec_ok(lab, sibling, "readlink", f"/proc/{in_pod}/exe").startswith("/bin/")
    lab.remove_pod(pod)


def test_a_setup_that_times_out_leaves_no_process_behind(lab: Lab) -> None:
    """The pod's cgroup is frozen, so a new container's init stops as soon as it joins its
    cgroup (before the image is touched): the shim gives up after its 10 s, and the init must
    go, not only the process that forked it."""
    fs = Cgroupfs.from_host()
    if fs.mode == CgroupMode.V2:
        freeze_file, frozen, thawed = "cgroup.freeze", "1", "0"
    elif "freezer" in fs.controllers():
        freeze_file, frozen, thawed = "freezer.state", "FROZEN", "THAWED"
    else:
        pytest.skip("no freezer: neither cgroup v2 nor a v1 freezer hierarchy")
    pod = run_pod(lab, "frozen")
    pod_cgroup = f"{CGROUP_PARENT}/{LEAF_PREFIX}pod-{pod}"
    freezer = next(d for d in fs.dirs(pod_cgroup) if (d / freeze_file).exists())
    (freezer / freeze_file).write_text(frozen)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            create(lab, pod, "stuck", ["sleep", "1000"], timeout=60)
        assert "did not get ready" in (caught.value.details() or "")
        stuck = [int(p) for d in freezer.iterdir() if d.is_dir() for p in _procs(d)]
        # v1 keeps a killed task frozen (it dies when thawed); v2 lets it die at once.
        assert stuck or fs.mode == CgroupMode.V2, "the init never reached its cgroup"
        for pid in stuck:
            with contextlib.suppress(FileNotFoundError):
                assert int(proc_status(pid)["ShdPnd"], 16) & SIGKILL_BIT, pid
    finally:
        (freezer / freeze_file).write_text(thawed)
    deadline = time.monotonic() + 10
    while any(_procs(d) for d in freezer.iterdir() if d.is_dir()):
        assert time.monotonic() < deadline, "a setup process outlived its container"
        time.sleep(0.05)
    for pid in stuck:
        assert not Path(f"/proc/{pid}").exists() or proc_status(pid)["State"].startswith("Z")
    # The daemon could not remove the container's cgroup while its init was frozen.
    for directory in fs.dirs(pod_cgroup):
        for child in directory.iterdir():
            if child.is_dir():
                child.rmdir()
    lab.remove_pod(pod)


def test_a_working_dir_through_a_proc_magic_link_is_refused(lab: Lab) -> None:
    """In the pod's PID namespace, /proc/1 is the pod's init, whose root is the host's: a
    working dir of /proc/1/root/... must not be made (as root) on the host."""
    pod = run_pod(lab, "workdir", pid_mode=0)
    escape = Path(f"/tmp/cri-py-escape-{os.urandom(4).hex()}")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            create(lab, pod, "escape", ["true"], pid_mode=0, working_dir=f"/proc/1/root{escape}")
        assert "working directory" in (caught.value.details() or "")
        assert not escape.exists()
    finally:
        with contextlib.suppress(FileNotFoundError):
            escape.rmdir()
    lab.remove_pod(pod)


def test_the_pods_init_is_no_way_to_the_host(lab: Lab) -> None:
    """PID 1 of a pod-wide PID namespace is the shim's reaper, a host process: a container
    that may ptrace (CAP_SYS_PTRACE) must not reach the host's files or powers through it."""
    pod = run_pod(lab, "pod-init", pid_mode=0)
    cid = create(
        lab, pod, "tracer", ["sleep", "1000"], pid_mode=0, add_capabilities=("SYS_PTRACE",)
    )
    lab.start(cid)
    marker = Path(f"/tmp/cri-py-marker-{os.urandom(4).hex()}")
    marker.write_text("host")
    try:
        seen = lab.exec(cid, "cat", f"/proc/1/root{marker}")
        assert seen.stdout != b"host" and seen.exit_code != 0
        fields = status_fields(exec_ok(lab, cid, "cat", "/proc/1/status"))
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    finally:
        marker.unlink()
    lab.remove_pod(pod)


def test_a_profile_that_denies_openat2_still_runs_and_execs(lab: Lab, tmp_path: Path) -> None:
    """The launcher opens the program (openat2, magic links refused) before the seccomp filter
    goes on: a Localhost profile recorded on a runtime that never needed openat2 still works."""
    profile = tmp_path / "no-openat2.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["openat2"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    pod = run_pod(lab, "no-openat2")
    seccomp = pb.SecurityProfile(profile_type=2, localhost_ref=str(profile))  # type: ignore[arg-type]
    cid = create(lab, pod, "limited", ["sleep", "1000"], seccomp=seccomp)
    lab.start(cid)
    assert lab.status(cid).state == pb.CONTAINER_RUNNING
    assert exec_ok(lab, cid, "echo", "ran") == "ran\n"
    lab.remove_pod(pod)


def _procs(cgroup_dir: Path) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return (cgroup_dir / "cgroup.procs").read_text().split()
    return []


class DnsServer:
    """Answers A queries for the names it knows (NXDOMAIN for others, no AAAA), on UDP port 53
    of one address; records the names it was asked."""

    def __init__(self, address: str, records: dict[str, str]) -> None:
        self.records = records
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            with contextlib.suppress(ValueError, IndexError, struct.error):
                self.sock.sendto(self.answer(query), peer)

    def answer(self, query: bytes) -> bytes:
        ident, _, count = struct.unpack("!HHH", query[:6])
        if count != 1:
            raise ValueError("one question per query")
        labels, at = [], 12
        while query[at]:
            labels.append(query[at + 1 : at + 1 + query[at]].decode())
            at += 1 + query[at]
        qtype, _ = struct.unpack("!HH", query[at + 1 : at + 5])
        question = query[12 : at + 5]
        name = ".".join(labels).lower()
        self.asked.append(name)
        address = self.records.get(name)
        if address is None:
            return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question
        if qtype != 1:
            return struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
        record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + record


def _bridge_address(name: str) -> str:
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", name], capture_output=True, check=True
    ).stdout
    return str(json.loads(out)[0]["addr_info"][0]["local"])


def _pod_file(lab: Lab, sandbox_id: str, name: str) -> Path:
    for base in (lab.daemon.root_dir, lab.daemon.run_dir):
        found = list(base.glob(f"**/{sandbox_id}/{name}"))
        if found:
            return found[0]
    raise AssertionError(f"no {name} for pod {sandbox_id}")


def test_a_non_root_container_reads_its_pod_files_and_resolves_names(lab: Lab) -> None:
    # The bridge exists once a pod runs on it; its address is the pods' way to the host.
    first = run_pod(lab, "dns-first")
    gateway = _bridge_address(BRIDGE)
    server = DnsServer(gateway, {"probe.cri-py.test": "10.95.0.99"})
    try:
        dns = pb.DNSConfig(servers=[gateway], options=["timeout:2", "attempts:2"])
        pod = run_pod(lab, "dns", dns=dns)
        for name in ("resolv.conf", "hosts", "hostname"):
            assert _pod_file(lab, pod, name).stat().st_mode & 0o777 == 0o644, name
        cid = create(lab, pod, "nonroot", ["sleep", "1000"], run_as_user=1000)
        lab.start(cid)
        assert exec_ok(lab, cid, "id", "-u") == "1000\n"
        assert exec_ok(lab, cid, "cat", "/etc/resolv.conf").startswith(f"nameserver {gateway}\n")
        assert exec_ok(lab, cid, "cat", "/etc/hostname") == "dns-host\n"
        assert "dns-host" in exec_ok(lab, cid, "cat", "/etc/hosts")
        looked_up = lab.exec(cid, "nslookup", "probe.cri-py.test", timeout=20)
        assert b"10.95.0.99" in looked_up.stdout, looked_up
        assert "probe.cri-py.test" in server.asked
    finally:
        server.close()
    lab.remove_pod(first)
    lab.remove_pod(pod)


def test_home_is_set_from_the_images_passwd_in_the_init_and_in_an_exec(lab: Lab) -> None:
    # runc's rule; the node e2e suite found HOME unset (busybox's passwd says /root for root).
    pod = run_pod(lab, "home")
    cid = create(lab, pod, "homeless", ["sleep", "1000"])
    lab.start(cid)
    init_env = exec_ok(lab, cid, "cat", "/proc/1/environ").split("\0")
    assert "HOME=/root" in init_env
    assert exec_ok(lab, cid, "sh", "-c", "echo $HOME") == "/root\n"
    stranger = create(lab, pod, "stranger", ["sleep", "1000"], run_as_user=4242)
    lab.start(stranger)
    assert exec_ok(lab, stranger, "sh", "-c", "echo $HOME") == "/\n"
    lab.remove_pod(pod)


def test_nothing_is_left_behind(lab: Lab) -> None:
    # Runs last in this module: every test above removed its pods.
    assert lab.leftovers() == []
