"""The daemon process as kubelet and crictl meet it: the socket, startup refusals, bad bytes on
the wire, and a graceful stop."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb

from .conftest import Daemon, needs_root, start_daemon

pytestmark = needs_root


def test_version_and_conditions_over_the_socket(daemon: Daemon) -> None:
    runtime = daemon.runtime()
    version = runtime.Version(pb.VersionRequest())
    assert (version.runtime_name, version.runtime_api_version) == ("cri-py", "v1")
    status = runtime.Status(pb.StatusRequest()).status
    by_type = {c.type: c for c in status.conditions}
    assert by_type["RuntimeReady"].status is True
    # The built-in bridge makes the network ready with no CNI config.
    assert by_type["NetworkReady"].status is True, by_type["NetworkReady"].message


def test_socket_is_root_only_0660(daemon: Daemon) -> None:
    info = daemon.socket.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (0, 0)
    assert stat.S_IMODE(daemon.root_dir.stat().st_mode) == 0o700


def test_garbage_and_truncated_frames_leave_the_daemon_serving(daemon: Daemon) -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    payloads = [
        b"\x00\xff garbage \x13\x37" * 100,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        preface + b"\x00\x00\x12\x04\x00\x00\x00\x00",  # SETTINGS frame cut short
        preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x10\x00\x01\x04",  # HEADERS cut
    ]
    for payload in payloads:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(daemon.socket))
            s.sendall(payload)
    version = daemon.runtime().Version(pb.VersionRequest(), timeout=5)
    assert version.runtime_name == "cri-py"
    # A gRPC message whose length prefix promises more bytes than the stream carries.
    channel = grpc.insecure_channel(daemon.address)
    truncated = channel.unary_unary(
        "/runtime.v1.RuntimeService/Version",
        request_serializer=lambda _: b"\x0a\x05ab",  # field 1, length 5, only 2 bytes
        response_deserializer=pb.VersionResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as excinfo:
        truncated(object(), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed VersionRequest" in (excinfo.value.details() or "")
    assert daemon.process.poll() is None
    assert daemon.runtime().Version(pb.VersionRequest(), timeout=5).runtime_name == "cri-py"


def test_second_daemon_on_the_same_run_dir_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "cri_py.cli",
        "serve",
        "--config",
        str(tmp_path / "none"),
        "--run-dir",
        str(daemon.run_dir),
        "--root-dir",
        str(tmp_path / "root2"),
        "--socket",
        str(daemon.socket),
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"another cri-py (pid {daemon.process.pid})" in result.stderr
    assert daemon.runtime().Version(pb.VersionRequest(), timeout=5).runtime_name == "cri-py"


def test_socket_held_by_another_process_is_refused(tmp_path: Path) -> None:
    sock_path = tmp_path / "held.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as holder:
        holder.bind(str(sock_path))
        holder.listen(1)
        args = [
            sys.executable,
            "-m",
            "cri_py.cli",
            "serve",
            "--config",
            str(tmp_path / "none"),
            "--run-dir",
            str(tmp_path / "run"),
            "--root-dir",
            str(tmp_path / "root"),
            "--socket",
            str(sock_path),
        ]
        result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "held by a live process" in result.stderr


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "d" / "run" / "cri-py.sock"
    stale.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # bound but closed: nobody accepts on it any more
    d = start_daemon(tmp_path / "d")
    try:
        assert d.runtime().Version(pb.VersionRequest()).runtime_name == "cri-py"
    finally:
        d.stop()


def test_sigterm_stops_gracefully_and_removes_the_socket(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "d")
    assert d.stop(signal.SIGTERM) == 0
    assert not d.socket.exists()
    assert "msg=stopped" in d.log()
