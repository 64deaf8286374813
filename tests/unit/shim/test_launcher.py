"""The launcher's promises that hold without root: setup processes are non-dumpable, start
from default signal actions and take the container's OOM score before they touch the image;
image files are read only if regular and bounded; no descriptor but stdio and the sync socket
reaches the container; the shim kills the init a timed-out setup reported, not only its own
child. Launcher code changes process-wide state, so each case runs in a forked child."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cri_py.linux import syscalls
from cri_py.oci.plan import LaunchPlan, User
from cri_py.shim import containers, launcher, messages, programs
from cri_py.shim.containers import Containers, Hooks
from cri_py.shim.sync import ContainerError, SetupProcesses, receive_ready

# Ignored or blocked in the child before the launcher runs, as a shim started from a script may
# have them (Python itself ignores SIGPIPE and SIGXFSZ).
IGNORED = (signal.SIGPIPE, signal.SIGQUIT, signal.SIGXFSZ, signal.SIGHUP, signal.SIGINT)
PLAN = LaunchPlan(
    join=(),
    new_mount_ns=False,
    new_pid_ns=False,
    rootfs="/nonexistent",
    readonly_rootfs=False,
    mounts=(),
    late_mounts=(),
    masked_paths=(),
    readonly_paths=(),
    args=("true",),
    env=(),
    cwd="/",
    user=User(),
    terminal=False,
)


def in_child(body: Callable[[], Any]) -> Any:
    """`body`'s JSON result, run in a forked child whose report pipe is fd 3 (the one
    descriptor above stdio the launcher keeps)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(write, 3, inheritable=False)
            try:
                result = {"ok": body()}
            except Exception as e:
                result = {"error": f"{type(e).__name__}: {e}"}
            os.write(3, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def status() -> dict[str, str]:
    text = Path("/proc/self/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def disturb_signals() -> None:
    for signum in IGNORED:
        signal.signal(signum, signal.SIG_IGN)
    # glibc's own 32 and 33, ignored as a child of glibc's posix_spawn (make) inherits them.
    for signum in (32, 33):
        syscalls.set_signal_action(signum, ignored=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})


def process_state() -> dict[str, Any]:
    fields = status()
    return {
        "dumpable": syscalls.prctl(syscalls.PR_GET_DUMPABLE),
        "ignored": fields["SigIgn"],
        "blocked": fields["SigBlk"],
        "oom_score_adj": int(Path("/proc/self/oom_score_adj").read_text()),
        "fds": sorted(int(n) for n in os.listdir("/proc/self/fd")),
    }


@contextlib.contextmanager
def sync_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def higher_score() -> int:
    """An oom_score_adj above this process's: raising one needs no privilege."""
    return min(1000, int(Path("/proc/self/oom_score_adj").read_text()) + 7)


def reported(ours: socket.socket, child: int) -> tuple[list[int], dict[str, Any]]:
    """The PIDs a launch reported ("P") and the state its "E" carried (a reporter raised)."""
    started = SetupProcesses()
    try:
        with pytest.raises(ContainerError) as caught:
            receive_ready(ours, 10, started)
    finally:
        started.close()
        os.waitpid(child, 0)
    _, _, state = str(caught.value).partition(": ")
    return started.pids, json.loads(state)


def test_an_init_is_non_dumpable_with_default_signals_before_it_touches_the_image() -> None:
    score = higher_score()
    with sync_pair() as (ours, theirs):
        child = os.fork()
        if child == 0:
            try:
                disturb_signals()
                os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)  # must not survive

                def report(*_: object) -> NoReturn:
                    raise launcher.LaunchError(json.dumps(process_state()))

                # In this child only: the rootfs work is where the state is looked at.
                launcher.prepare_rootfs = report  # type: ignore[assignment]
                null = os.open(os.devnull, os.O_RDWR)
                limits = launcher.Limits(oom_score_adj=score)
                launcher.run_init(PLAN, (), [null] * 3, theirs.fileno(), False, limits)
            finally:
                os._exit(99)
        theirs.close()
        pids, state = reported(ours, child)
    assert pids == [child]  # the init said who it is before the rootfs work
    assert state["dumpable"] == 0
    assert (state["ignored"], state["blocked"]) == ("0" * 16, "0" * 16)
    assert state["oom_score_adj"] == score  # before the image is touched
    assert state["fds"] == [0, 1, 2, 3, 4]  # stdio, the sync socket, the listing's own


def test_an_exec_and_the_process_that_forks_it_are_non_dumpable_and_confined() -> None:
    score = higher_score()
    with sync_pair() as (ours, theirs):
        child = os.fork()
        if child == 0:
            try:
                disturb_signals()
                parent: dict[str, Any] = {}

                def note_parent(join: object) -> None:
                    parent.update(process_state())

                def report(*_: object) -> NoReturn:
                    raise launcher.LaunchError(json.dumps({"parent": parent, **process_state()}))

                launcher.join_namespaces = note_parent  # type: ignore[assignment]
                launcher.become = report  # type: ignore[assignment]
                null = os.open(os.devnull, os.O_RDWR)
                user = User(os.getuid(), os.getgid())
                limits = launcher.Limits(oom_score_adj=score)
                launcher.run_exec(
                    [], user, "/", ["true"], [], [null] * 3, theirs.fileno(), limits=limits
                )
            finally:
                os._exit(99)
        theirs.close()
        pids, state = reported(ours, child)
    assert len(pids) == 1 and pids[0] != child  # the command, forked by our child
    for process in (state, state["parent"]):
        assert process["dumpable"] == 0
        assert (process["ignored"], process["blocked"]) == ("0" * 16, "0" * 16)
        assert process["oom_score_adj"] == score


def test_reset_signals_leaves_nothing_ignored_or_blocked() -> None:
    def body() -> dict[str, str]:
        disturb_signals()
        before = status()
        launcher.reset_signals()
        after = status()
        return {"before": before["SigIgn"], "ignored": after["SigIgn"], "blocked": after["SigBlk"]}

    result = in_child(body)["ok"]
    before = int(result["before"], 16)
    assert before & (1 << (signal.SIGQUIT - 1)) and before & (1 << 31)  # the child did ignore them
    assert (result["ignored"], result["blocked"]) == ("0" * 16, "0" * 16)


def test_an_inheritable_descriptor_fails_the_audit_and_others_are_closed() -> None:
    def clean() -> list[int]:
        os.closerange(4, 1 << 20)  # what the test runner left open
        high = os.dup2(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), 1000, inheritable=False)
        launcher.audit_descriptors()
        with pytest.raises(OSError):
            os.fstat(high)  # close-on-exec, and closed all the same
        return sorted(int(n) for n in os.listdir("/proc/self/fd"))

    assert in_child(clean)["ok"] == [0, 1, 2, 3, 4]  # the listing's own descriptor is 4

    def leaky() -> None:
        os.closerange(4, 1 << 20)
        fd = os.open("/etc/hostname", os.O_RDONLY)
        os.set_inheritable(fd, True)
        launcher.audit_descriptors()

    error = in_child(leaky)["error"]
    assert "LaunchError" in error and "/etc/hostname" in error


def test_a_working_directory_outside_the_root_fails_the_audit() -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")

    def outside() -> None:
        os.closerange(4, 1 << 20)
        os.chdir("/")
        os.chroot("/proc")  # the working directory stays the old root's
        launcher.audit_descriptors()

    assert "outside the container's root" in in_child(outside)["error"]


def test_image_files_are_read_only_if_regular_and_bounded(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\n")
    assert programs.read_image_file(str(passwd)) == ("root:x:0:0::/root:/bin/sh\n", "")
    assert programs.read_image_file(str(tmp_path / "missing")) == ("", "")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert programs.read_image_file(str(fifo)) == ("", f"{fifo} is not a regular file")
    assert time.monotonic() - started < 1  # no writer was waited for
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    assert programs.read_image_file(str(zero)) == ("", f"{zero} is not a regular file")
    assert programs.read_image_file(str(tmp_path))[1].endswith("is not a regular file")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    assert programs.read_image_file(str(big), limit=100) == ("", f"{big} is larger than 100 bytes")
    assert programs.read_image_file(str(big), limit=101) == ("x" * 101, "")


def test_a_named_user_in_an_unreadable_passwd_fails_with_the_reason(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")

    def body() -> int:
        os.chroot(tmp_path)
        os.chdir("/")
        return programs.image_user(User(username="app"))[0].uid

    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc" / "passwd")
    error = in_child(body)["error"]
    assert "'app' not found" in error and "/etc/passwd is not a regular file" in error


def test_the_last_capability_is_the_kernels() -> None:
    expected = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    assert launcher.last_capability() == expected


def test_a_setup_that_times_out_kills_the_init_it_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shim's child forks the init and leaves (as it does into a new PID namespace); the
    init reports itself and hangs. The shim must kill it, not only its child."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    spec = {"process": {"args": ["true"], "cwd": "/"}, "root": {"path": str(rootfs)}}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    pid_file = tmp_path / "init.pid"

    def hanging_init(*args: Any) -> NoReturn:
        sync = socket.socket(fileno=os.dup(args[3]))  # run_init's sync_fd
        if os.fork() == 0:
            try:
                pid_file.write_text(str(os.getpid()))
                launcher.report_pid(sync)
                time.sleep(60)
            finally:
                os._exit(0)
        os._exit(0)

    monkeypatch.setattr(launcher, "run_init", hanging_init)
    monkeypatch.setattr(containers, "SYNC_TIMEOUT_SECONDS", 1.0)
    shim = Containers(Hooks(lambda fd, cb: None, lambda fd: None, lambda event: None))
    with pytest.raises(ContainerError, match="did not get ready"):
        shim.create(messages.Create("c1", str(tmp_path), ()))
    init = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(init):
        assert time.monotonic() < deadline, f"the reported init {init} is still running"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_program_reached_through_proc_self_exe_is_refused(tmp_path: Path) -> None:
    """CVE-2019-5736: execve of /proc/self/exe, or of a script whose interpreter is, would run
    the launcher's own executable (the host's Python) in the container."""
    link = tmp_path / "python"
    link.symlink_to("/proc/self/exe")
    evil = tmp_path / "evil"
    evil.write_text("#!/proc/self/exe\n")
    chained = tmp_path / "chained"
    chained.write_text(f"#! {link} -c pass\n")
    nested = tmp_path / "nested"
    nested.write_text(f"#!{chained}\n")
    for script in (evil, chained, nested):
        script.chmod(0o755)
    for program in ("/proc/self/exe", str(link), str(evil), str(chained), str(nested)):
        with pytest.raises(programs.LaunchError, match="magic link"):
            programs.open_program(program, [program])
    with pytest.raises(FileNotFoundError):
        programs.open_program(str(tmp_path / "missing"), ["missing"])


def test_a_script_runs_as_the_interpreter_it_names_as_the_kernel_would(tmp_path: Path) -> None:
    """What runs is the file that was checked: the "#!" line is followed here, and execve gets
    the interpreter's descriptor with the kernel's argv (interpreter, argument, script, rest)."""
    inner = tmp_path / "inner"
    inner.write_text("#!/bin/sh -e\necho hi\n")
    outer = tmp_path / "outer"
    outer.write_text(f"#!{inner}\n")
    inner.chmod(0o755)
    outer.chmod(0o755)
    for script, argv in (
        (inner, ["/bin/sh", "-e", str(inner), "one", "two"]),
        (outer, ["/bin/sh", "-e", str(inner), str(outer), "one", "two"]),
    ):
        fd, got = programs.open_program(str(script), ["name", "one", "two"])
        try:
            assert got == argv
            assert os.path.samestat(os.fstat(fd), os.stat("/bin/sh"))
        finally:
            os.close(fd)
    fd, got = programs.open_program("/bin/sh", ["sh", "-c", "true"])
    os.close(fd)
    assert got == ["sh", "-c", "true"]


def test_the_path_search_skips_what_cannot_run(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("#!/bin/sh\n")  # not executable
    (second / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)
    found = programs.find_program(["tool", "x"], f"{tmp_path}/none:{first}:{second}")
    assert not isinstance(found, str)
    fd, argv = found
    os.close(fd)
    assert argv == ["/bin/sh", f"{second}/tool", "x"]
    missing = programs.find_program(["nothing-here"], str(first))
    assert missing == 'exec: "nothing-here": executable file not found in $PATH'
    denied = programs.find_program(["tool"], str(first))
    assert denied == f"exec {first}/tool: Permission denied"
