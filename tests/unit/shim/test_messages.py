"""The typed shim messages: every request and reply round-trips, the version 1 wire format
(what the daemon and shim of 26f9c6f sent) decodes, and malformed messages are refused, by the
decoder and by a running shim (which answers "invalid" and keeps serving)."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cri_py.shim import messages, protocol
from cri_py.shim.client import ShimClient, ShimError, connect_unix, start_shim, stop_shim
from cri_py.shim.spec import SOCKET_FILE, ShimSpec

OVERLAY = {"type": "overlay", "source": "overlay", "options": ["lowerdir=/l,upperdir=/u"]}
VIEW = messages.ContainerView(
    "c1",
    42,
    "exited",
    1,
    2,
    messages.ExitInfo(137, 3, "Error", "", 2, 42),
    messages.ProcessUser(1000, 1000, (5, 6)),
)

REQUESTS: list[messages.ShimRequest] = [
    messages.Ping(),
    messages.Status(),
    messages.Shutdown(),
    messages.Subscribe(),
    messages.Create(
        "c1",
        "/b",
        (OVERLAY,),
        "/logs/c.log",
        True,
        True,
        -500,
        ("/sys/fs/cgroup/x/cgroup.procs",),
        "/sys/fs/cgroup/x/memory.events",
        (("memory", "/x"),),
    ),
    messages.Start("c1"),
    messages.Kill("c1", 15),
    messages.ContainerStatus("c1"),
    messages.Wait("c1"),
    messages.Attach("c1", ("stderr", "stdout"), True),
    messages.CloseStdin("c1"),
    messages.ReopenLog("c1"),
    messages.Remove("c1"),
    messages.Exec("c1", ("sh", "-c", "echo ü"), 2.5, False),
    messages.ExecStream("c1", ("sh",), True),
]

REPLIES: list[messages.Reply] = [
    messages.Done(),
    messages.ShimStatus("s" * 64, 10, 11, None, 5, (VIEW,), 2),
    messages.Subscribed((VIEW,), 2),
    VIEW,
    messages.ContainerView("c2", 7, "created", oom_score_adj=-998),
    messages.Attached(True),
    messages.ExecResult(0, b"\x00\xffout", b"err"),
]


def test_every_method_has_a_request_type_and_round_trips_through_a_frame() -> None:
    assert {type(r).METHOD for r in REQUESTS} == set(messages.REQUESTS)
    for request in REQUESTS:
        frame = protocol.encode(protocol.Request(7, request.METHOD, request.to_wire()))
        (decoded,) = protocol.Decoder().feed(frame)
        assert isinstance(decoded, protocol.Request)
        assert messages.decode_request(decoded.method, decoded.params) == request


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_every_reply_round_trips_through_a_frame(reply: messages.Reply) -> None:
    (decoded,) = protocol.Decoder().feed(protocol.encode(protocol.Response(1, reply.to_wire())))
    assert isinstance(decoded, protocol.Response) and decoded.result is not None
    assert type(reply).from_wire(decoded.result) == reply


def test_the_exited_event_keeps_version_1_keys() -> None:
    event = messages.Exited("c1", messages.ExitInfo(0, 9, "Completed", "", 4, 42))
    wire = event.to_wire()
    assert wire == {
        "id": "c1",
        "exit_code": 0,
        "finished_at": 9,
        "reason": "Completed",
        "message": "",
        "started_at": 4,
        "pid": 42,
    }
    assert messages.Exited.from_wire(wire) == event


def test_version_1_requests_decode() -> None:
    """As the daemon of 26f9c6f sent them: no cgroup keys without cgroups, int timeouts."""
    create = messages.decode_request(
        "create",
        {
            "id": "c1",
            "bundle": "/b",
            "rootfs": [OVERLAY],
            "log_path": "/l",
            "stdin": False,
            "stdin_once": False,
            "oom_score_adj": 0,
        },
    )
    assert create == messages.Create("c1", "/b", (OVERLAY,), "/l", oom_score_adj=0)
    assert messages.decode_request("kill", {"id": "c1"}) == messages.Kill("c1", signal.SIGKILL)
    exec_request = {"id": "c1", "args": ["true"], "timeout": 0}
    assert messages.decode_request("exec", exec_request) == messages.Exec("c1", ("true",))


def test_version_1_replies_decode_with_their_defaults() -> None:
    """A shim of 26f9c6f says no `protocol` (version 1) and no oom_score_adj unless asked."""
    view = {
        "id": "c1",
        "pid": 42,
        "status": "running",
        "created_at": 1,
        "started_at": 2,
        "exit": None,
        "user": {"uid": 0, "gid": 0, "groups": []},
    }
    status = {
        "sandbox_id": "s",
        "pid": 9,
        "init_pid": 0,
        "init_exit": None,
        "started_at": 3,
        "containers": [view],
    }
    decoded = messages.ShimStatus.from_wire(status)
    assert decoded.protocol == 1 and decoded.containers[0].user == messages.ProcessUser(0, 0)
    assert messages.Subscribed.from_wire({"containers": []}).protocol == 1
    assert messages.ContainerView.from_wire(view).oom_score_adj is None


@pytest.mark.parametrize(
    ("method", "params", "error"),
    [
        ("launch", {"id": "c1"}, "unknown method 'launch'"),
        ("start", {}, "field 'id' is missing"),
        ("start", {"id": 7}, "field 'id' must be str, not int"),
        ("kill", {"id": "c1", "signal": "9"}, "field 'signal' must be int"),
        ("kill", {"id": "c1", "signal": True}, "field 'signal' must be int, not bool"),
        ("exec", {"id": "c1", "args": "ls"}, "field 'args' must be list"),
        ("exec", {"id": "c1", "args": ["ls", 1]}, "field 'args' must hold str values"),
        ("exec", {"id": "c1", "args": ["ls"], "timeout": "1"}, "field 'timeout' must be"),
        ("attach", {"id": "c1", "streams": ["stdout"], "stdin": 1}, "field 'stdin' must be"),
        ("create", {"id": "c1", "bundle": "/b", "rootfs": []}, "at least one mount"),
        ("create", {"id": "c1", "bundle": "/b", "rootfs": ["/"]}, "must hold dict values"),
        (
            "create",
            {"id": "c1", "bundle": "/b", "rootfs": [OVERLAY], "cgroup_mounts": [["memory"]]},
            "[name, source] pairs",
        ),
        (
            "create",
            {"id": "c1", "bundle": "/b", "rootfs": [OVERLAY], "oom_score_adj": 1.5},
            "field 'oom_score_adj' must be int",
        ),
    ],
)
def test_malformed_requests_are_refused(method: str, params: dict[str, Any], error: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=error.replace("[", r"\[")):
        messages.decode_request(method, params)


def test_malformed_replies_are_refused() -> None:
    with pytest.raises(protocol.ProtocolError, match="not base64"):
        messages.ExecResult.from_wire({"exit_code": 0, "stdout": "!!!", "stderr": ""})
    with pytest.raises(protocol.ProtocolError, match="'exit_code' is missing"):
        messages.ExecResult.from_wire({"stdout": "", "stderr": ""})
    with pytest.raises(protocol.ProtocolError, match="'user' must be dict"):
        messages.ContainerView.from_wire({"id": "c", "status": "running", "user": [0, 0]})
    with pytest.raises(protocol.ProtocolError, match="'containers' must hold dict"):
        messages.Subscribed.from_wire({"containers": ["c1"]})


# --- against a running shim (no namespaces: runs unprivileged) -----------------------------


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[Path]:
    spec = ShimSpec("t" * 64, new_net=False, new_ipc=False, new_uts=False)
    process = start_shim(tmp_path, spec)
    try:
        yield tmp_path
    finally:
        stop_shim(tmp_path, process)


def raw_call(bundle: Path, frame: bytes) -> list[protocol.Message]:
    """Sends `frame`, returns what the shim answered before closing or going quiet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        connect_unix(conn, bundle / SOCKET_FILE)
        conn.sendall(frame)
        decoder = protocol.Decoder()
        while True:
            data = conn.recv(65536)
            if not data:
                return []
            got = decoder.feed(data)
            if got:
                return got


def test_a_shim_answers_malformed_requests_invalid_and_keeps_serving(shim: Path) -> None:
    for method, params in [
        ("kill", {"id": 3, "signal": 9}),
        ("exec", {"id": "c1", "args": "rm -rf /"}),
        ("hello", {}),
    ]:
        (reply,) = raw_call(shim, protocol.encode(protocol.Request(5, method, params)))
        assert isinstance(reply, protocol.Response) and reply.error is not None
        assert reply.id == 5 and reply.error.kind == "invalid", reply
    # Not a frame of this protocol at all: the connection is dropped, the shim stays.
    body = json.dumps({"neither": "request nor response"}).encode()
    assert raw_call(shim, len(body).to_bytes(4, "big") + body) == []
    client = ShimClient(shim)
    status = client.ping()
    assert status.protocol == protocol.PROTOCOL_VERSION and status.containers == ()
    with pytest.raises(ShimError) as excinfo:
        client.start("nothing-here")
    assert excinfo.value.kind == "not_found"
