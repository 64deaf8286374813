"""Attack corpus against a real daemon: hostile images and racing containers, modeled on runc's
advisories (CVE-2016-9962, -2019-5736, -2019-16884, -2021-30465, -2024-21626, -2025-31133,
-2025-52565, -2025-52881) and issue 17's cases.

Every test plays the attacker and checks the host: the host paths the attack aims at stay
untouched (no entry, no mount in the host's mountinfo), the container is refused with a clear
error or confined (what it sees is shown), and nothing (shim child, mount, state) is left once
its pod is removed. Images come from `hostile_images` (busybox + one hostile layer, pushed to
the lab registry); the tests skip, as the other lab tests do, when that registry is down.
Pods run on the test bridge `cri-pyt5` (10.85.0.0/24).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.cgroupfs import Cgroupfs
from cri_py.linux.mountinfo import mount_points

from . import hostile_images as hostile
from .conftest import needs_root
from .test_containers import BUSYBOX, ROOT, Lab, open_lab, remove_cgroup_parent

pytestmark = needs_root

CGROUP_PARENT = f"/cri-py-tests/isolation-{secrets.token_hex(4)}"
# The shims get a cgroup of this module's own, with a memory limit: on today's code an image's
# `/etc/passwd -> /dev/zero` is read by a setup process still in the shim's cgroup, and the
# machine is shared.
SHIM_CGROUP = f"/cri-py-tests/isolation-shims-{secrets.token_hex(4)}"
SHIM_MEMORY_LIMIT = 768 << 20
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyt5\n  subnet: 10.85.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n  shim_cgroup: {SHIM_CGROUP}\n"
)
# CapBnd of a default container: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
# NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP (as test_security's).
DEFAULT_CAPS = 0xA80425FB
# CreateContainer + StartContainer of a hostile image must answer within this, hang or not.
BOUND_SECONDS = 30.0
# The containers each pod under test got, for `leftovers`.
_CREATED: dict[str, list[str]] = {}
POD_PID = 0  # NamespaceMode.POD: the pod's containers share one PID namespace
CONTAINER_PID = 1


def limit_shim_memory() -> None:
    fs = Cgroupfs.from_host()
    fs.create(SHIM_CGROUP)
    for directory in fs.dirs(SHIM_CGROUP):
        for name in ("memory.limit_in_bytes", "memory.max"):
            with contextlib.suppress(OSError):
                (directory / name).write_text(str(SHIM_MEMORY_LIMIT))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not hostile.registry_up():
        pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")
    limit_shim_memory()
    base = tmp_path_factory.mktemp("isolation")
    try:
        with open_lab(base, CONFIG, cgroup_parent=CGROUP_PARENT) as opened:
            yield opened
    finally:
        # A runtime that leaks a setup process (a test then fails and says so) must not leave
        # it on the machine: this module's daemon started it, and its command line says so.
        for pid in processes_naming(str(base)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        remove_cgroup_parent(SHIM_CGROUP)


def processes_naming(text: str) -> list[int]:
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if text.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                found.append(int(name))
    return found


@dataclass
class Outcome:
    """What CreateContainer + StartContainer of one container did."""

    container_id: str = ""
    error: grpc.RpcError | None = None
    seconds: float = 0.0
    started: bool = False

    @property
    def refused(self) -> bool:
        return self.error is not None

    def message(self) -> str:
        if self.error is None:
            return "(not refused)"
        return f"{self.error.code().name}: {self.error.details()}"


def pull(lab: Lab, image: str) -> None:
    lab.daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=120)


def container_config(
    name: str,
    image: str,
    command: Sequence[str],
    mounts: Sequence[pb.Mount] = (),
    working_dir: str = "",
    tty: bool = False,
    pid_mode: int = CONTAINER_PID,
    run_as_username: str = "",
    memory_limit: int = 256 << 20,
    seccomp: pb.SecurityProfile | None = None,
    privileged: bool = False,
    oom_score_adj: int = 0,
) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=list(command),
        working_dir=working_dir,
        tty=tty,
        mounts=list(mounts),
        log_path=f"{name}.log",
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(
                memory_limit_in_bytes=memory_limit, oom_score_adj=oom_score_adj
            ),
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(pid=pid_mode),  # type: ignore[arg-type]
                run_as_username=run_as_username,
                seccomp=seccomp,
                privileged=privileged,
            ),
        ),
    )


def attempt(lab: Lab, sandbox_id: str, config: pb.ContainerConfig, start: bool = True) -> Outcome:
    """Create (and start) the container; a refusal at either step is the outcome's error."""
    rt = lab.daemon.runtime()
    outcome = Outcome()
    began = time.monotonic()
    try:
        outcome.container_id = rt.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=config, sandbox_config=lab.configs[sandbox_id]
            ),
            timeout=BOUND_SECONDS + 30,
        ).container_id
        _CREATED.setdefault(sandbox_id, []).append(outcome.container_id)
        if start:
            rt.StartContainer(
                pb.StartContainerRequest(container_id=outcome.container_id),
                timeout=BOUND_SECONDS + 30,
            )
            outcome.started = True
    except grpc.RpcError as error:
        outcome.error = error
    outcome.seconds = time.monotonic() - began
    print(f"{config.metadata.name}: {outcome.message()} ({outcome.seconds:.1f}s)")
    return outcome


@contextlib.contextmanager
def pod(
    lab: Lab, name: str, pid_mode: int = CONTAINER_PID, privileged: bool = False
) -> Iterator[str]:
    """A pod removed on the way out, pass or fail."""
    unique = f"{name}-{secrets.token_hex(2)}"
    # A privileged pod as the original helper made it: every namespace of the pod's (mode 0).
    sandbox_id = lab.run_pod(unique, 0 if privileged else pid_mode, privileged=privileged)
    try:
        yield sandbox_id
    finally:
        with contextlib.suppress(grpc.RpcError):
            lab.remove_pod(sandbox_id)
        lab.pods.remove(sandbox_id)


def leftovers(lab: Lab, sandbox_id: str) -> list[str]:
    """What is left of one pod: processes of its shim (a setup process forked from the shim
    and never exec'd carries the shim's command line, which names the sandbox), host mounts
    and state naming the pod or one of its containers."""
    names = [sandbox_id, *_CREATED.get(sandbox_id, ())]
    found = [
        m
        for m in mount_points(Path("/proc/self/mountinfo").read_text())
        if any(name in m for name in names)
    ]
    found += [
        str(path)
        for path in (
            lab.daemon.run_dir / "sandboxes" / sandbox_id,
            *(lab.daemon.root_dir / "containers" / cid for cid in names[1:]),
        )
        if path.exists()
    ]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if sandbox_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(f"process {pid}")
    return found


def assert_nothing_left(lab: Lab, sandbox_id: str) -> None:
    """No process, mount or state of the pod once it is removed (waited for, briefly)."""
    deadline = time.monotonic() + 10
    while (left := leftovers(lab, sandbox_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"left after removing the pod: {left}"


def host_mounts_under(path: Path) -> list[str]:
    """Mount points in the host's mount namespace at or below `path`."""
    text = Path("/proc/1/mountinfo").read_text() + Path("/proc/self/mountinfo").read_text()
    prefix = str(path).rstrip("/")
    return sorted({m for m in mount_points(text) if m == prefix or m.startswith(prefix + "/")})


def assert_host_dir_untouched(path: Path, expected: Sequence[str] = ()) -> None:
    entries = sorted(os.listdir(path))
    assert entries == sorted(expected), f"written on the host in {path}: {entries}"
    assert host_mounts_under(path) == [], f"mounted on the host: {host_mounts_under(path)}"


def init_pid(lab: Lab, container_id: str) -> int:
    info = (
        lab.daemon.runtime()
        .ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=10
        )
        .info
    )
    return int(json.loads(info["info"])["pid"])


def host_status_field(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def host_pids_with_cmdline(cmdline: bytes) -> list[int]:
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{name}/cmdline").read_bytes() == cmdline:
                found.append(int(name))
    return found


# --- image symlinks over the kernel directories (/dev, /proc, /sys) -----------------------------

SHAPES = ("absolute", "relative")


def link_to(host_dir: Path, shape: str) -> str:
    return str(host_dir) if shape == "absolute" else hostile.escape_upwards(str(host_dir))


@pytest.mark.parametrize("shape", SHAPES)
def test_image_with_dev_symlinked_to_a_host_dir_is_refused_and_the_dir_stays_empty(
    lab: Lab, tmp_path: Path, shape: str
) -> None:
    """Issue 17's first case (and runc's /dev symlink advisories): before pivot_root, /dev's
    nodes (0666 null, zero, full, random, urandom, tty) and links (core -> /proc/kcore, fd...)
    were made by a path that followed the image's link onto the host."""
    target = tmp_path / "host-dev"
    target.mkdir()
    image = hostile.push_image(
        f"dev-link-{shape}", [hostile.symlink("dev", link_to(target, shape))]
    )
    pull(lab, image)
    with pod(lab, f"dev-link-{shape}") as sandbox:
        outcome = attempt(lab, sandbox, container_config("devlink", image, ["sleep", "3600"]))
        assert_host_dir_untouched(target)
        assert outcome.refused, f"a /dev symlink was accepted (should be refused): {outcome}"
        assert "/dev" in outcome.message(), outcome.message()
    assert_nothing_left(lab, sandbox)
    assert_host_dir_untouched(target)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel_dir", ["proc", "sys"])
def test_image_with_proc_or_sys_symlinked_is_refused_and_nothing_lands_on_the_host(
    lab: Lab, tmp_path: Path, kernel_dir: str, shape: str
) -> None:
    """A /proc or /sys that is a link would carry procfs/sysfs (and the masks meant for them)
    wherever the image points: refused, as issue 17 (and runc) require."""
    target = tmp_path / f"host-{kernel_dir}"
    target.mkdir()
    case = f"{kernel_dir}-link-{shape}"
    image = hostile.push_image(case, [hostile.symlink(kernel_dir, link_to(target, shape))])
    pull(lab, image)
    with pod(lab, case) as sandbox:
        outcome = attempt(lab, sandbox, container_config("link", image, ["sleep", "3600"]))
        assert_host_dir_untouched(target)
        seen = ""
        if outcome.started:
            listing = lab.exec(outcome.container_id, "ls", f"/{kernel_dir}/").stdout.decode()
            seen = " ".join(listing.split()[:30])
        assert outcome.refused, f"/{kernel_dir} symlink accepted; the container sees:\n{seen}"
        assert f"/{kernel_dir}" in outcome.message(), outcome.message()
    assert_nothing_left(lab, sandbox)
    assert_host_dir_untouched(target)


# --- mount destinations through image symlinks ---------------------------------------------------


def test_mount_destinations_through_absolute_and_dotdot_symlinks_stay_in_the_rootfs(
    lab: Lab, tmp_path: Path
) -> None:
    """A volume's destination, and the pod files' (/etc/hosts, /etc/resolv.conf), go through
    image links aimed at host dirs: the mounts (and the mount points made for them) land inside
    the rootfs, where the links resolve when / is the rootfs; the host dirs stay empty."""
    aims = {name: tmp_path / f"aim-{name}" for name in ("abs", "rel", "pod-files", "file")}
    for aim in aims.values():
        aim.mkdir()
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "marker").write_text("volume-content\n")
    single = tmp_path / "single-file"
    single.write_text("file-volume\n")
    image = hostile.push_image(
        "mount-dest-links",
        [
            hostile.symlink("abs", str(aims["abs"])),
            hostile.symlink("rel", hostile.escape_upwards(str(aims["rel"]))),
            hostile.symlink("etc/hosts", str(aims["pod-files"] / "hosts")),
            hostile.symlink(
                "etc/resolv.conf", hostile.escape_upwards(str(aims["pod-files"] / "resolv.conf"))
            ),
            hostile.symlink(
                "etc/hostname", hostile.escape_upwards(str(aims["pod-files"] / "hostname"))
            ),
            hostile.symlink("file-link", hostile.escape_upwards(str(aims["file"] / "f"))),
        ],
    )
    pull(lab, image)
    mounts = [
        pb.Mount(container_path="/abs/vol", host_path=str(volume)),
        pb.Mount(container_path="/rel/deeper/vol", host_path=str(volume)),
        pb.Mount(container_path="/file-link", host_path=str(single), readonly=True),
    ]
    with pod(lab, "mount-dest") as sandbox:
        outcome = attempt(
            lab, sandbox, container_config("dest", image, ["sleep", "3600"], mounts=mounts)
        )
        for aim in aims.values():
            assert_host_dir_untouched(aim)
        assert (volume / "marker").read_text() == "volume-content\n"
        assert sorted(os.listdir(volume)) == ["marker"]
        assert single.read_text() == "file-volume\n"
        # Not refused (images link /var/run -> /run and mount there): confined. Through the
        # links, as they resolve inside the container, the volumes and the pod's files.
        assert not outcome.refused, outcome.message()
        cid = outcome.container_id
        assert lab.exec(cid, "cat", "/abs/vol/marker").stdout == b"volume-content\n"
        assert lab.exec(cid, "cat", "/rel/deeper/vol/marker").stdout == b"volume-content\n"
        assert lab.exec(cid, "cat", "/file-link").stdout == b"file-volume\n"
        hostname = lab.exec(cid, "cat", "/etc/hostname").stdout.decode().strip()
        assert hostname == lab.configs[sandbox].hostname
    assert_nothing_left(lab, sandbox)
    for aim in aims.values():
        assert_host_dir_untouched(aim)


# --- image files the launcher reads: /etc/passwd and /etc/group ----------------------------------

PASSWD_CASES = {
    "passwd-dev-zero": [hostile.symlink("etc/passwd", "/dev/zero")],
    "passwd-fifo": [hostile.fifo("etc/passwd")],
    "group-fifo": [hostile.fifo("etc/group")],
}


@pytest.mark.parametrize("case", sorted(PASSWD_CASES))
def test_passwd_or_group_that_is_not_a_regular_file_cannot_hang_or_exhaust_the_shim(
    lab: Lab, case: str
) -> None:
    """`/etc/passwd -> /dev/zero` or a FIFO: the launcher reads them for the user; it must
    neither read forever nor block forever. Create answers within BOUND_SECONDS; a user named
    by name is refused loudly when /etc/passwd is not a file; the pod's shim still serves; no
    process is left."""
    image = hostile.push_image(case, PASSWD_CASES[case])
    pull(lab, image)
    with pod(lab, case) as sandbox:
        by_uid = attempt(lab, sandbox, container_config("by-uid", image, ["sleep", "3600"]))
        assert by_uid.seconds < BOUND_SECONDS, f"create took {by_uid.seconds:.1f}s: {by_uid}"
        if by_uid.refused:
            assert "passwd" in by_uid.message() or "group" in by_uid.message(), by_uid.message()
        else:
            # Read from /proc: `id` would itself read the hostile /etc/passwd (the image's
            # own business, not the runtime's).
            status = lab.exec(by_uid.container_id, "grep", "^Uid:", "/proc/self/status")
            assert status.stdout.split()[1:2] == [b"0"], status.stdout
        if case.startswith("passwd"):
            by_name = attempt(
                lab,
                sandbox,
                container_config("by-name", image, ["sleep", "3600"], run_as_username="root"),
            )
            assert by_name.seconds < BOUND_SECONDS, f"took {by_name.seconds:.1f}s: {by_name}"
            assert by_name.refused, "user 'root' resolved from a /etc/passwd that is no file"
            assert "passwd" in by_name.message(), by_name.message()
        # The pod's shim was not wedged: an ordinary container still comes up and answers.
        plain = attempt(lab, sandbox, container_config("plain", BUSYBOX, ["sleep", "3600"]))
        assert not plain.refused, plain.message()
        assert lab.exec(plain.container_id, "echo", "alive").stdout == b"alive\n"
    assert_nothing_left(lab, sandbox)


# --- CVE-2019-16884: a volume over /proc ---------------------------------------------------------


def test_volume_over_proc_cannot_fake_procfs_for_the_launcher(lab: Lab, tmp_path: Path) -> None:
    """runc wrote its AppArmor label into a fake /proc a volume put there. Here a hostPath
    volume at /proc holds a fake kernel: cap_last_cap = 0 (so a launcher that trusts it cuts
    nothing from the bounding set), files where the masks go. Refused, or confined: the
    bounding set of the init and of an exec is the default one and the host files are
    unchanged."""
    fake = tmp_path / "fake-proc"
    files = {
        "sys/kernel/cap_last_cap": "0\n",
        "kcore": "fake-kcore\n",
        "keys": "fake-keys\n",
        "sysrq-trigger": "fake-sysrq\n",
        "self/attr/exec": "fake-attr\n",
    }
    for name, text in files.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(text)
    mounts = [pb.Mount(container_path="/proc", host_path=str(fake))]
    with pod(lab, "proc-volume") as sandbox:
        outcome = attempt(
            lab, sandbox, container_config("fakeproc", BUSYBOX, ["sleep", "3601"], mounts=mounts)
        )
        if outcome.refused:
            assert "/proc" in outcome.message(), outcome.message()
        else:
            pid = init_pid(lab, outcome.container_id)
            assert host_status_field(pid, "CapBnd") == DEFAULT_CAPS, "init's bounding set"
            # An exec's process, found from the host by its unique command line.
            lab.exec(outcome.container_id, "sh", "-c", "sleep 3602 </dev/null >/dev/null 2>&1 &")
            (exec_pid,) = host_pids_with_cmdline(b"sleep\x003602\x00")
            assert host_status_field(exec_pid, "CapBnd") == DEFAULT_CAPS, "exec's bounding set"
        for name, text in files.items():
            assert (fake / name).read_text() == text, f"host file {name} changed"
    assert_nothing_left(lab, sandbox)


# --- CVE-2021-30465: a sibling swaps a directory for a symlink in a shared volume ---------------

RACE_CREATIONS = 100
THROUGH_MOUNTS = 12


def test_racing_sibling_cannot_move_a_mount_out_of_the_rootfs(lab: Lab, tmp_path: Path) -> None:
    """A sibling container shares a hostPath volume and, in a tight loop, swaps its directory
    `d` for symlinks to a host dir (absolute and `..` shapes), while another container is
    created again and again with a volume whose destination goes through `d`. Whatever the
    timing, no mount point is made and nothing is mounted in the host dir."""
    shared = tmp_path / "shared"
    shared.mkdir()
    aim = tmp_path / "aim"
    aim.mkdir()
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "marker").write_text("volume\n")
    relative = hostile.escape_upwards(str(aim))
    loop = (
        "while :; do "
        f"mkdir d; rm -rf d; ln -s {aim} d; rm -f d; "
        f"mkdir d; rm -rf d; ln -s {relative} d; rm -f d; "
        "done 2>/dev/null"
    )
    # Two loops on the same name: more swaps per millisecond than one shell can make.
    swapper = f"cd /shared; ({loop}) & ({loop}) & wait"
    shared_mount = pb.Mount(container_path="/shared", host_path=str(shared))
    # Several destinations through `d` per creation: each is one more window to hit.
    through = [
        pb.Mount(container_path=f"/shared/d/vol{n}", host_path=str(volume))
        for n in range(THROUGH_MOUNTS)
    ]
    rt = lab.daemon.runtime()
    refused = 0
    with pod(lab, "race") as sandbox:
        attacker = attempt(
            lab,
            sandbox,
            container_config("swapper", BUSYBOX, ["sh", "-c", swapper], mounts=[shared_mount]),
        )
        assert not attacker.refused, attacker.message()
        for round_number in range(RACE_CREATIONS):
            victim = attempt(
                lab,
                sandbox,
                container_config(
                    f"victim-{round_number}",
                    BUSYBOX,
                    ["sleep", "3600"],
                    mounts=[shared_mount, *through],
                ),
                start=False,
            )
            refused += victim.refused
            assert_host_dir_untouched(aim)
            if victim.container_id:
                rt.RemoveContainer(
                    pb.RemoveContainerRequest(container_id=victim.container_id), timeout=30
                )
        assert lab.status(attacker.container_id).state == pb.CONTAINER_RUNNING
    assert_nothing_left(lab, sandbox)
    assert_host_dir_untouched(aim)
    assert sorted(os.listdir(volume)) == ["marker"]
    print(f"{refused} of {RACE_CREATIONS} racing creations refused")


# --- CVE-2024-21626: working dir through a leaked descriptor; descriptors at exec ---------------


def test_working_dir_through_proc_self_fd_is_refused_or_inside_the_container(lab: Lab) -> None:
    """runc left a host directory open at execve; a working dir of /proc/self/fd/<n> then put
    the container's cwd on the host. Each n: refused, or the cwd is reachable from the
    container's / (getcwd shows no "(unreachable)")."""
    script = "pwd -P > /tmp/cwd 2>&1; ls -a >> /tmp/cwd 2>&1; exec sleep 3600"
    seen = {}
    with pod(lab, "cwd-fd") as sandbox:
        for fd in range(3, 10):
            outcome = attempt(
                lab,
                sandbox,
                container_config(
                    f"fd{fd}", BUSYBOX, ["sh", "-c", script], working_dir=f"/proc/self/fd/{fd}"
                ),
            )
            if outcome.refused:
                seen[fd] = outcome.message()
                continue
            deadline = time.monotonic() + 10
            text = ""
            while time.monotonic() < deadline and not text:
                text = lab.exec(outcome.container_id, "cat", "/tmp/cwd").stdout.decode()
            seen[fd] = text
            assert text and "unreachable" not in text, f"fd {fd}: the container's cwd: {text}"
            pid = init_pid(lab, outcome.container_id)
            assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
    print(seen)
    assert_nothing_left(lab, sandbox)


def test_init_and_exec_start_with_only_stdio_open(lab: Lab) -> None:
    """No host descriptor survives into the container: its init holds 0, 1, 2 (seen from the
    host) and an exec'd `ls /proc/self/fd` sees 0, 1, 2 and its own directory's 3; each
    points at a pipe, a terminal or /dev/null, never a host file."""
    with pod(lab, "fds") as sandbox:
        outcome = attempt(lab, sandbox, container_config("fds", BUSYBOX, ["sleep", "3600"]))
        assert not outcome.refused, outcome.message()
        pid = init_pid(lab, outcome.container_id)
        assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
        for fd in ("0", "1", "2"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            assert link.startswith(("pipe:", "/dev/null", "/dev/pts/")), (fd, link)
        listing = lab.exec(outcome.container_id, "ls", "/proc/self/fd").stdout.split()
        assert sorted(listing) == [b"0", b"1", b"2", b"3"], listing
        cwd = lab.exec(outcome.container_id, "sh", "-c", "pwd -P; ls -l /proc/self/cwd")
        assert b"unreachable" not in cwd.stdout, cwd.stdout
    assert_nothing_left(lab, sandbox)


# --- CVE-2019-5736 / CVE-2016-9962: setup processes seen from inside the container --------------

WATCHER = r"""
: > /tmp/seen
while :; do
  for p in /proc/[0-9]*; do
    n=${p#/proc/}
    case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
      *cri[_]py*) grep -q "^saw $n$" /tmp/seen || echo "saw $n" >> /tmp/seen
        readlink $p/exe >/dev/null 2>&1 && echo "exe $n $(readlink $p/exe)" >> /tmp/seen
        head -c 4 $p/exe >/dev/null 2>&1 && echo "read-exe $n" >> /tmp/seen
        ( : >> $p/exe ) 2>/dev/null && echo "write-exe $n" >> /tmp/seen
        head -c 1 $p/environ >/dev/null 2>&1 && echo "environ $n" >> /tmp/seen
        readlink $p/fd/0 >/dev/null 2>&1 && echo "fd $n $(readlink $p/fd/0)" >> /tmp/seen
        readlink $p/cwd >/dev/null 2>&1 && echo "cwd $n $(readlink $p/cwd)" >> /tmp/seen ;;
    esac
  done
done
"""
WATCH_ROUNDS = 8


def test_setup_processes_cannot_be_reached_from_a_container_sharing_their_pid_namespace(
    lab: Lab,
) -> None:
    """CVE-2016-9962 / CVE-2019-5736: a container in a pod-wide PID namespace watches for the
    runtime's setup processes (a sibling's init between its setup and its execve, which lasts
    until StartContainer; an exec's fork before its execve): host python, with the host's
    binary as /proc/<pid>/exe, the shim's environment and descriptors. It may see them (a
    command line is public) but must not reach their exe, environ, descriptors or cwd: they
    are non-dumpable until execve. Seccomp is unconfined, so no capability is kept until
    execve and the setup process holds exactly the watcher's capabilities: only
    dumpability stands between them."""
    unconfined = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    with pod(lab, "watch", pid_mode=POD_PID) as sandbox:
        watcher = attempt(
            lab,
            sandbox,
            container_config(
                "watcher", BUSYBOX, ["sh", "-c", WATCHER], pid_mode=POD_PID, seccomp=unconfined
            ),
        )
        assert not watcher.refused, watcher.message()
        rt = lab.daemon.runtime()

        def seen() -> list[str]:
            reply = lab.exec(watcher.container_id, "cat", "/tmp/seen")
            return reply.stdout.decode().splitlines()

        new_sightings = 0
        for round_number in range(WATCH_ROUNDS):
            before = {line for line in seen() if line.startswith("saw ")}
            sibling = attempt(
                lab,
                sandbox,
                container_config(
                    f"sib-{round_number}",
                    BUSYBOX,
                    ["true"],
                    pid_mode=POD_PID,
                    seccomp=unconfined,
                ),
                start=False,
            )
            assert not sibling.refused, sibling.message()
            # The sibling's init waits for StartContainer: give the watcher time to find it.
            deadline = time.monotonic() + 5
            lines = seen()
            while time.monotonic() < deadline and not (
                {line for line in lines if line.startswith("saw ")} - before
            ):
                lines = seen()
            new_sightings += bool({line for line in lines if line.startswith("saw ")} - before)
            lab.exec(watcher.container_id, "true")  # an exec's fork, too
            rt.RemoveContainer(
                pb.RemoveContainerRequest(container_id=sibling.container_id), timeout=30
            )
            reached = [line for line in seen() if not line.startswith("saw ")]
            assert reached == [], f"setup processes reached from the container: {reached}"
        assert new_sightings, "the watcher never saw a setup process: the attack did not run"
    assert_nothing_left(lab, sandbox)


def interpreter_libraries() -> list[str]:
    """The shared libraries (sonames) the host's python loads, but libc and the loader: an
    image may put FIFOs there, and the dynamic loader of a host python started in the
    container then waits on them, holding the process for the attacker to look at."""
    listing = subprocess.run(
        ["ldd", os.path.realpath(sys.executable)], capture_output=True, text=True, check=True
    ).stdout
    return [
        line.split()[0]
        for line in listing.splitlines()
        if "=>" in line and not line.split()[0].startswith(("libc.so", "ld-linux"))
    ]


def self_exe_image(case: str, entries: Sequence[hostile.Entry]) -> str:
    """busybox + `entries` + FIFOs where the host python's libraries would be loaded from."""
    libraries = interpreter_libraries()
    return hostile.push_image(
        f"{case}-" + hashlib.sha256(" ".join(libraries).encode()).hexdigest()[:8],
        [
            *entries,
            *(hostile.fifo(f"lib/x86_64-linux-gnu/{name}") for name in libraries),
            *(hostile.fifo(f"usr/lib/x86_64-linux-gnu/{name}") for name in libraries),
        ],
    )


# Ways to name /proc/self/exe to execve: the program's "#!" line, a link to it as the program
# or as the interpreter, a script whose interpreter is such a script, other spellings.
SELF_EXE_PROGRAMS: dict[str, tuple[list[hostile.Entry], list[str]]] = {
    "shebang": ([hostile.file("bin/evil", b"#!/proc/self/exe\n", 0o755)], ["/bin/evil"]),
    "linked-interpreter": (
        [
            hostile.symlink("bin/interp", "/proc/self/exe"),
            hostile.file("bin/evil", b"#!/bin/interp\n", 0o755),
        ],
        ["/bin/evil"],
    ),
    "nested-scripts": (
        [
            hostile.file("bin/evil", b"#!/bin/evil2\n", 0o755),
            hostile.file("bin/evil2", b"#!/proc/self/exe\n", 0o755),
        ],
        ["/bin/evil"],
    ),
    "dev-fd-dotdot": ([hostile.file("bin/evil", b"#!/dev/fd/../exe\n", 0o755)], ["/bin/evil"]),
    "thread-self": (
        [hostile.file("bin/evil", b"#!/proc/thread-self/exe\n", 0o755)],
        ["/bin/evil"],
    ),
    "linked-program": ([hostile.symlink("bin/evil", "/proc/self/exe")], ["evil"]),
    "direct": ([], ["/proc/self/exe"]),
}


@pytest.mark.parametrize("shape", sorted(SELF_EXE_PROGRAMS))
def test_a_proc_self_exe_entrypoint_gets_no_handle_on_the_host_interpreter(
    lab: Lab, shape: str
) -> None:
    """CVE-2019-5736: a program that is, or is interpreted by, /proc/self/exe makes the
    execve of a setup process run whatever that process is (here the host's python, as runc
    ran runc) inside the container, whose root may then open /proc/<pid>/exe: a handle on the
    host's binary (runc's was overwritten through it). The image's FIFOs in place of that
    python's libraries hold such a process in the dynamic loader. The container must not
    reach the host's interpreter: refused, or its /proc/1/exe is no host binary it can open
    (a sealed copy, as runc's, would do), and nothing can be written through it."""
    host_python = os.path.realpath(sys.executable)
    entries, command = SELF_EXE_PROGRAMS[shape]
    image = self_exe_image(f"self-exe-{shape}", entries)
    pull(lab, image)
    with pod(lab, f"self-exe-{shape}") as sandbox:
        outcome = attempt(lab, sandbox, container_config("selfexe", image, command))
        seen = ""
        if not outcome.refused:
            cid = outcome.container_id
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not seen.strip():
                seen = lab.exec(cid, "readlink", "/proc/1/exe").stdout.decode()
            opened = lab.exec(cid, "head", "-c", "4", "/proc/1/exe")
            written = lab.exec(cid, "sh", "-c", ": >> /proc/1/exe")
            assert written.exit_code != 0, "/proc/1/exe opened for writing"
            reached = opened.exit_code == 0 and seen.strip() == host_python
            assert not reached, f"the container opened the host's interpreter: {seen.strip()}"
        print(f"/proc/1/exe in the container: {seen.strip() or outcome.message()}")
    assert_nothing_left(lab, sandbox)


SWAP_EXECS = 300
# Swapped by atomic renames: the program itself (a harmless script / `#!/proc/self/exe`), or
# the link its "#!" names (to /bin/sh / to /proc/self/exe).
SELF_EXE_SWAPPERS = {
    "program": (
        "printf '#!/bin/sh\\necho good\\n' > /good; printf '#!/proc/self/exe\\n' > /bad; "
        "chmod 755 /good /bad; while :; do "
        "cp /good /bin/.g; mv /bin/.g /bin/evil; cp /bad /bin/.b; mv /bin/.b /bin/evil; done"
    ),
    "interpreter": (
        "printf '#!/bin/interp\\necho good\\n' > /bin/evil; chmod 755 /bin/evil; while :; do "
        "ln -s /bin/sh /bin/.g; mv /bin/.g /bin/interp; "
        "ln -s /proc/self/exe /bin/.b; mv /bin/.b /bin/interp; done"
    ),
}
SELF_EXE_WATCHER = (
    "while :; do for p in /proc/[0-9]*; do "
    'case "$(readlink $p/exe 2>/dev/null)" in {python}) '
    "head -c 4 $p/exe >/dev/null 2>&1 && echo reached $p >> /tmp/reached;; esac; done; done"
)


@pytest.mark.parametrize("swapped", sorted(SELF_EXE_SWAPPERS))
def test_a_program_swapped_after_its_check_gets_no_handle_on_the_host_interpreter(
    lab: Lab, swapped: str
) -> None:
    """The race on the check above: the container itself swaps /bin/evil, or the link its
    "#!" line names, while execs of it run, so a check that reads a path and an execve that
    resolves it again may see different files. No exec may end up as the host's interpreter
    (held by the FIFOs, an exec that did would time out), and the container's watcher never
    opens it."""
    host_python = os.path.realpath(sys.executable)
    image = self_exe_image("self-exe-swap", [])
    pull(lab, image)
    watcher = SELF_EXE_WATCHER.format(python=host_python)
    script = f"({SELF_EXE_SWAPPERS[swapped]}) & ({watcher}) & wait"
    timed_out = 0
    answers: dict[str, int] = {}
    with pod(lab, f"self-exe-swap-{swapped}") as sandbox:
        outcome = attempt(lab, sandbox, container_config("swapper", image, ["sh", "-c", script]))
        assert not outcome.refused, outcome.message()
        cid = outcome.container_id
        for _ in range(SWAP_EXECS):
            try:
                reply = lab.exec(cid, "/bin/evil", timeout=2)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
                timed_out += 1
                if timed_out >= 3:
                    break  # shown often enough
                continue
            output = (reply.stdout + reply.stderr).decode(errors="replace").strip()[:80]
            key = f"{reply.exit_code}: {output}"
            answers[key] = answers.get(key, 0) + 1
        log = lab.exec(cid, "sh", "-c", "cat /tmp/reached 2>/dev/null").stdout.decode()
        reached = sorted(set(log.split()) - {"reached"})
        print(f"answers: {answers}; timed out: {timed_out}")
        assert reached == [], f"the container opened the host's interpreter as {reached}"
        assert timed_out == 0, f"{timed_out} execs ran the host's interpreter (held in ld.so)"
    assert_nothing_left(lab, sandbox)


# --- CVE-2025-31133 / -52565 / -52881: masks and /dev/console through a /dev the attacker owns --


@pytest.mark.parametrize("null_shape", ["regular-file", "symlink-to-procfs"])
def test_masks_are_not_redirected_through_a_fake_dev_null(
    lab: Lab, tmp_path: Path, null_shape: str
) -> None:
    """runc masked files by bind-mounting the container's /dev/null without checking it; an
    attacker who controls /dev (here a hostPath volume at /dev, as a sibling racing on a
    shared /dev would) makes /dev/null a regular host file (masks become writable windows onto
    it) or a link to a writable procfs file (the masks become that file). /dev/console (52565)
    is a host file too, which the runtime must not mount its terminal onto. Refused, or: the
    masked paths read empty, writes through them change no host file, and the pod's hostname
    (the UTS sysctl the link aims at) is unchanged."""
    dev = tmp_path / "dev"
    dev.mkdir()
    if null_shape == "regular-file":
        (dev / "null").write_text("host-file\n")
    else:
        (dev / "null").symlink_to("/proc/sys/kernel/hostname")
    (dev / "console").write_text("host-console\n")
    before = {
        name: (dev / name).read_text() for name in ("null", "console") if (dev / name).is_file()
    }
    mounts = [pb.Mount(container_path="/dev", host_path=str(dev))]
    with pod(lab, f"mask-{null_shape}") as sandbox:
        outcome = attempt(
            lab,
            sandbox,
            container_config("mask", BUSYBOX, ["sleep", "3600"], mounts=mounts, tty=True),
        )
        if outcome.refused:
            assert "/dev" in outcome.message(), outcome.message()
        else:
            cid = outcome.container_id
            for masked in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):
                read = lab.exec(cid, "head", "-c", "64", masked)
                assert read.stdout == b"", f"{masked} is not masked: {read.stdout!r}"
                lab.exec(cid, "sh", "-c", f"echo pwned > {masked}")
            hostname = lab.exec(cid, "hostname").stdout.decode().strip()
            assert hostname == lab.configs[sandbox].hostname, f"hostname became {hostname!r}"
        after = {name: (dev / name).read_text() for name in before}
        assert after == before, f"host files under the /dev volume changed: {after}"
        assert host_mounts_under(dev) == []
    assert_nothing_left(lab, sandbox)


def test_exec_does_not_trust_a_proc_the_container_replaced(lab: Lab) -> None:
    """CVE-2025-52881 at exec time: what the runtime writes to /proc for a new process (its
    oom_score_adj) must go to the real procfs, not to a file a container put there. A
    privileged container (it may mount) covers its /proc with a tmpfs of fake files; an exec
    into it still gets the container's oom_score_adj (seen from the host) and the fakes are
    untouched."""
    fake = (
        "mount -t tmpfs fake /proc && mkdir -p /proc/self && "
        "echo fake > /proc/self/oom_score_adj && touch /tmp/ready && exec sleep 3604"
    )
    with pod(lab, "fake-proc-exec", privileged=True) as sandbox:
        outcome = attempt(
            lab,
            sandbox,
            container_config(
                "faker", BUSYBOX, ["sh", "-c", fake], privileged=True, oom_score_adj=500
            ),
        )
        assert not outcome.refused, outcome.message()
        cid = outcome.container_id
        deadline = time.monotonic() + 10
        while (ready := lab.exec(cid, "test", "-e", "/tmp/ready")).exit_code != 0:
            assert time.monotonic() < deadline, f"no exec into the container: {ready}"
        reply = lab.exec(cid, "sh", "-c", "sleep 3605 </dev/null >/dev/null 2>&1 &")
        assert reply.exit_code == 0, reply.stderr
        (exec_pid,) = host_pids_with_cmdline(b"sleep\x003605\x00")
        init = init_pid(lab, cid)
        assert Path(f"/proc/{exec_pid}/oom_score_adj").read_text() == "500\n"
        assert Path(f"/proc/{init}/oom_score_adj").read_text() == "500\n"
        fake_file = lab.exec(cid, "cat", "/proc/self/oom_score_adj")
        assert fake_file.stdout == b"fake\n", fake_file.stdout
    assert_nothing_left(lab, sandbox)
