"""Exec, attach and port-forward through the streaming server, driven by crictl (SPDY) against a
real daemon: exit codes, an interactive shell on a terminal, stdin/stdout volume, attach to a
container's live stdio, port-forward to a pod's loopback, and one-time URLs.

Pods run on the test bridge `cri-pyt6` (10.93.0.0/24), never on a real cri-py's.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb

from .conftest import needs_root
from .test_containers import BUSYBOX, CGROUP_PARENT, ROOT, Lab, open_lab

pytestmark = needs_root

CRICTL = Path(os.environ.get("TOOLS_DIR", "/var/cache/cri-py/tools")) / "bin" / "crictl"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyt6\n  subnet: 10.93.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not CRICTL.exists():
        pytest.skip(f"{CRICTL} not installed")
    with open_lab(tmp_path_factory.mktemp("streaming"), CONFIG) as opened:
        yield opened


def crictl(lab: Lab, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(CRICTL), "--runtime-endpoint", lab.daemon.address, *args],
        capture_output=True,
        timeout=60,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def start_container(
    lab: Lab,
    pod: str,
    name: str,
    command: list[str],
    stdin: bool = False,
    tty: bool = False,
    stdin_once: bool = False,
) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=command,
        log_path=f"{name}.log",
        stdin=stdin,
        stdin_once=stdin_once,
        tty=tty,
    )
    cid = (
        lab.daemon.runtime()
        .CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=config, sandbox_config=lab.configs[pod]
            ),
            timeout=30,
        )
        .container_id
    )
    lab.start(cid)
    return cid


@pytest.fixture(params=["spdy", "websocket"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def pod(lab: Lab) -> str:
    return lab.run_pod("streams")


@pytest.fixture(scope="module")
def sleeper(lab: Lab, pod: str) -> str:
    return start_container(lab, pod, "sleeper", ["sleep", "1000"])


def attach_and_detach(command: list[str]) -> None:
    """`crictl attach -i` (`command`) to a shell: a command typed in is answered, and the
    client's stdin ending detaches it with exit 0 (the container keeps running)."""
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(b"echo attached-$((40+2))\n")
            process.stdin.flush()
            assert b"attached-42" in read_until(process.stdout.fileno(), b"attached-42")
            process.stdin.close()
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()


def read_until(fd: int, wanted: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{wanted!r} not seen within {timeout}s; got {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"EOF before {wanted!r}; got {seen[-500:]!r}")
            seen += chunk
    return seen


def test_exec_returns_output_streams_and_the_exit_code(
    lab: Lab, sleeper: str, transport: str
) -> None:
    # crictl 1.37 exits 1 for any failed exec (ExecSync too) and names the code it received.
    script = "echo out; echo err >&2; exit 3"
    done = crictl(lab, "exec", "-r", transport, sleeper, "sh", "-c", script)
    assert (done.returncode, done.stdout) == (1, b"out\n")
    assert b"err\n" in done.stderr.replace(b"stderr", b"")
    assert b"command terminated with exit code 3" in done.stderr
    assert crictl(lab, "exec", "-r", transport, sleeper, "true").returncode == 0
    missing = crictl(lab, "exec", "-r", transport, sleeper, "no-such-command")
    assert b"command terminated with exit code 127" in missing.stderr


def test_exec_moves_10_mb_through_stdin_and_stdout(lab: Lab, sleeper: str, transport: str) -> None:
    data = os.urandom(5 * 1024 * 1024).hex().encode()
    done = crictl(lab, "exec", "-r", transport, "-i", sleeper, "cat", input=data)
    assert done.returncode == 0
    assert done.stdout == data


def test_exec_with_a_terminal_runs_an_interactive_shell(
    lab: Lab, sleeper: str, transport: str
) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(
            str(CRICTL),
            [
                str(CRICTL),
                "--runtime-endpoint",
                lab.daemon.address,
                "exec",
                "-r",
                transport,
                "-it",
                sleeper,
                "sh",
            ],
        )
    try:
        read_until(fd, b"# ")
        os.write(fd, b"echo $((6*7)) $(tty)\n")
        assert b"42 /dev/pts/" in read_until(fd, b"42 /dev/pts/")
        os.write(fd, b"stty size\n")
        read_until(fd, b"\n")
        os.write(fd, b"exit 5\n")
        read_until(fd, b"command terminated with exit code 5")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 1
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_attach_joins_the_live_stdio_of_a_container(lab: Lab, pod: str, transport: str) -> None:
    cid = start_container(lab, pod, f"shell-{transport}", ["sh"], stdin=True)
    command = [str(CRICTL), "--runtime-endpoint", lab.daemon.address, "attach", "-i", cid]
    command[-1:-1] = ["-r", transport]
    attach_and_detach(command)
    assert lab.status(cid).state == pb.CONTAINER_RUNNING


def test_attach_with_stdin_once_follows_the_output_to_the_exit(
    lab: Lab, pod: str, transport: str
) -> None:
    # `printf 'one\ntwo\n' | kubectl attach -i` to a stdin_once container: the input ending
    # closes the container's stdin, and the client sees what the container answered to it
    # (it used to be detached at once, its output lost).
    script = 'while read line; do echo "echo: $line"; sleep 0.2; done; echo done'
    cid = start_container(
        lab, pod, f"once-{transport}", ["sh", "-c", script], stdin=True, stdin_once=True
    )
    command = [str(CRICTL), "--runtime-endpoint", lab.daemon.address, "attach", "-i"]
    command += ["-r", transport, cid]
    got = subprocess.run(command, input=b"one\ntwo\n", capture_output=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"echo: one\necho: two\ndone\n"
    # The attach ended with the container's output; its exit is recorded a moment later.
    deadline = time.monotonic() + 10
    while lab.status(cid).state != pb.CONTAINER_EXITED:
        assert time.monotonic() < deadline, "the container did not exit after its stdin closed"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_port_forward_reaches_the_pods_loopback(lab: Lab, pod: str, transport: str) -> None:
    port = {"spdy": 8080, "websocket": 8081}[transport]  # both servers share the pod's network
    script = f"mkdir /www && echo hello-from-pod > /www/index.html && httpd -f -p {port} -h /www"
    server = start_container(lab, pod, f"server-{transport}", ["sh", "-c", script])
    deadline = time.monotonic() + 10
    while lab.exec(server, "wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/").exit_code != 0:
        assert time.monotonic() < deadline, "httpd did not start"
        time.sleep(0.1)
    local = free_port()
    command = [str(CRICTL), "--runtime-endpoint", lab.daemon.address, "port-forward"]
    command += ["-r", transport, pod]
    with subprocess.Popen(
        [*command, f"{local}:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as process:
        assert process.stdout is not None
        try:
            read_until(process.stdout.fileno(), b"Forwarding from")
            for _ in range(3):
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as reply:
                    assert reply.read() == b"hello-from-pod\n"
        finally:
            process.terminate()


def test_streaming_urls_are_single_use_and_validated(lab: Lab, sleeper: str) -> None:
    runtime = lab.daemon.runtime()
    with pytest.raises(grpc.RpcError) as caught:
        runtime.Exec(pb.ExecRequest(container_id=sleeper, cmd=["ls"], tty=True, stderr=True))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        runtime.Exec(pb.ExecRequest(container_id=sleeper, cmd=["ls"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    url = runtime.Exec(pb.ExecRequest(container_id=sleeper, cmd=["ls"], stdout=True)).url
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    request = urllib.request.Request(url, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)  # no upgrade: refused, token used up
    refused.value.close()
    assert refused.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(request, timeout=5)
    gone.value.close()
    assert gone.value.code == 404


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_20_concurrent_execs_each_moving_10_mb(lab: Lab, sleeper: str) -> None:
    size = 10 * 1024 * 1024
    before = rss_kib(lab.daemon.process.pid)
    command = [str(CRICTL), "--runtime-endpoint", lab.daemon.address, "exec", sleeper]
    script = f"head -c {size} /dev/zero"
    processes = [
        subprocess.Popen([*command, "sh", "-c", script], stdout=subprocess.PIPE) for _ in range(20)
    ]
    peak = before
    try:
        for process in processes:
            assert process.stdout is not None
            received = 0
            while chunk := process.stdout.read(1024 * 1024):
                received += len(chunk)
                peak = max(peak, rss_kib(lab.daemon.process.pid))
            assert (process.wait(30), received) == (0, size)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
    print(f"daemon RSS {before} KiB before, peak {peak} KiB during 20 x 10 MB execs")
    # Bounded buffers: the output waits in pipes and sockets, not in the daemon.
    assert peak - before < 100 * 1024


def test_a_client_that_goes_away_hangs_up_on_its_terminal_command(
    lab: Lab, sleeper: str, transport: str
) -> None:
    marker = {"spdy": "1001", "websocket": "1002"}[transport]
    pid, fd = pty.fork()
    if pid == 0:
        args = [
            "exec",
            "-r",
            transport,
            "-it",
            sleeper,
            "sh",
            "-c",
            f"echo ready; exec sleep {marker}",
        ]
        os.execv(str(CRICTL), [str(CRICTL), "--runtime-endpoint", lab.daemon.address, *args])
    try:
        read_until(fd, b"ready")
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 10
        while f"sleep {marker}".encode() in lab.exec(sleeper, "ps", "-o", "args").stdout:
            assert time.monotonic() < deadline, "the command outlived its client's terminal"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
