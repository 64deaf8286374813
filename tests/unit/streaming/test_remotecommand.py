from __future__ import annotations

from cri_py.streaming.remotecommand import (
    V2,
    V3,
    V4,
    decode_resizes,
    exit_status,
    expected_streams,
)
from cri_py.streaming.requests import ExecRequest
from cri_py.streaming.server import negotiate


def test_exit_status_follows_kubernetes_status_for_non_zero_codes() -> None:
    assert exit_status(0, ("true",)) == {"metadata": {}, "status": "Success"}
    status = exit_status(3, ("sh", "-c", "exit 3"))
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}


def test_expected_streams_depend_on_the_request_and_the_protocol() -> None:
    plain = ExecRequest("c", ("ls",), tty=False, stdin=False, stdout=True, stderr=True)
    assert expected_streams(plain, V4) == {"error", "stdout", "stderr"}
    tty = ExecRequest("c", ("sh",), tty=True, stdin=True, stdout=True, stderr=False)
    assert expected_streams(tty, V4) == {"error", "stdin", "stdout", "resize"}
    assert expected_streams(tty, V3) == {"error", "stdin", "stdout", "resize"}
    assert expected_streams(tty, V2) == {"error", "stdin", "stdout"}


def test_resize_events_decode_across_chunks_and_skip_garbage() -> None:
    sizes, rest = decode_resizes('{"Width":80,"Height":24}{"Width":1')
    assert (sizes, rest) == ([(80, 24)], '{"Width":1')
    sizes, rest = decode_resizes(rest + '00,"Height":50}\n["x"] {"Width":-1,"Height":2}')
    assert (sizes, rest) == ([(100, 50)], "")
    assert decode_resizes("not json" * 1000) == ([], "")


def test_negotiation_takes_the_clients_first_supported_protocol() -> None:
    assert negotiate(["v5.channel.k8s.io", V4, V3], (V4, V3, V2)) == V4
    assert negotiate([V2, V4], (V4, V3, V2)) == V2
    assert negotiate(["other"], (V4,)) is None
