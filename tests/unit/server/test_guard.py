"""The server edge: domain errors become their gRPC status, bugs become INTERNAL, unbuilt RPCs
answer UNIMPLEMENTED, and every call is logged with its name, duration and outcome."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cri_py import errors, log
from cri_py.api import api_pb2 as pb
from cri_py.api import api_pb2_grpc as pb_grpc
from cri_py.server.guard import Serialized, is_hot, service_handler


class FakeRuntime:
    async def Version(self, request: pb.VersionRequest, context: object) -> pb.VersionResponse:
        return pb.VersionResponse(runtime_name="fake")

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: object
    ) -> Serialized:
        # An answer cached in wire form (cri_py.server.summary_cache.ReplyCache).
        reply = pb.ListPodSandboxResponse(items=[pb.PodSandbox(id="cached")])
        return Serialized(reply.SerializeToString())

    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest, context: object) -> None:
        raise errors.NotFound(f"pod sandbox {request.pod_sandbox_id} not found")

    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: object) -> None:
        raise KeyError("secret internals")

    async def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest, context: object) -> None:
        # The request names the error class to raise: one RPC covers the whole hierarchy.
        raise getattr(errors, request.pod_sandbox_id)(f"{request.pod_sandbox_id} raised")

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: object
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        yield pb.ContainerEventResponse(container_id="a")
        raise errors.Unavailable("event stream closed")


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[pb_grpc.RuntimeServiceStub]:
    server = grpc.aio.server()
    service = pb.DESCRIPTOR.services_by_name["RuntimeService"]
    server.add_generic_rpc_handlers([service_handler(service, pb, FakeRuntime())])
    address = f"unix://{tmp_path}/guard.sock"
    server.add_insecure_port(address)
    await server.start()
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.RuntimeServiceStub(channel)
    await server.stop(None)


async def test_implemented_rpc_answers(stub: pb_grpc.RuntimeServiceStub) -> None:
    response = await stub.Version(pb.VersionRequest())
    assert response.runtime_name == "fake"


async def test_an_answer_already_serialized_goes_out_as_it_is(
    stub: pb_grpc.RuntimeServiceStub,
) -> None:
    response = await stub.ListPodSandbox(pb.ListPodSandboxRequest())
    assert [p.id for p in response.items] == ["cached"]


async def test_domain_error_keeps_its_code_and_message(stub: pb_grpc.RuntimeServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="abc"))
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert excinfo.value.details() == "pod sandbox abc not found"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT),
        ("NotFound", grpc.StatusCode.NOT_FOUND),
        ("AlreadyExists", grpc.StatusCode.ALREADY_EXISTS),
        ("FailedPrecondition", grpc.StatusCode.FAILED_PRECONDITION),
        ("DeadlineExceeded", grpc.StatusCode.DEADLINE_EXCEEDED),
        ("Unavailable", grpc.StatusCode.UNAVAILABLE),
        ("Unimplemented", grpc.StatusCode.UNIMPLEMENTED),
        ("ResourceExhausted", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("Internal", grpc.StatusCode.INTERNAL),
        ("CriError", grpc.StatusCode.UNKNOWN),
    ],
)
async def test_each_error_class_reaches_the_client_as_its_grpc_status(
    stub: pb_grpc.RuntimeServiceStub, error: str, status: grpc.StatusCode
) -> None:
    # errors.py names codes without grpc; the guard is the one place that maps them.
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=error))
    assert excinfo.value.code() == status
    assert excinfo.value.details() == f"{error} raised"


async def test_bug_is_internal_without_traceback(
    stub: pb_grpc.RuntimeServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    log.setup("info", "logfmt")
    logging.getLogger("cri_py").propagate = True  # let caplog see the records
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id="abc"))
    assert excinfo.value.code() == grpc.StatusCode.INTERNAL
    assert "StopPodSandbox" in (excinfo.value.details() or "")
    assert "Traceback" not in (excinfo.value.details() or "")
    [record] = [
        r for r in caplog.records if getattr(r, "fields", {}).get("rpc") == "StopPodSandbox"
    ]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None  # the traceback goes to our log, not to the client
    assert record.fields["code"] == "INTERNAL"  # type: ignore[attr-defined]
    assert record.fields["duration_ms"] >= 0  # type: ignore[attr-defined]


async def test_unbuilt_rpc_is_unimplemented_with_a_message(
    stub: pb_grpc.RuntimeServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.RunPodSandbox(pb.RunPodSandboxRequest())
    assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert excinfo.value.details() == (
        "runtime.v1.RuntimeService/RunPodSandbox is not implemented by cri-py yet"
    )


async def test_unbuilt_streaming_rpc_is_unimplemented_not_internal(
    stub: pb_grpc.RuntimeServiceStub,
) -> None:
    # Found by tests/integration/test_fuzz.py: the stand-in was a coroutine, not a stream.
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        async for _ in stub.StreamPodSandboxes(pb.StreamPodSandboxesRequest()):
            pass
    assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert excinfo.value.details() == (
        "runtime.v1.RuntimeService/StreamPodSandboxes is not implemented by cri-py yet"
    )


async def test_stream_error_after_items_keeps_its_code(stub: pb_grpc.RuntimeServiceStub) -> None:
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        async for event in stub.GetContainerEvents(pb.GetEventsRequest()):
            received.append(event.container_id)
    assert received == ["a"]
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("rpc", "hot"),
    [
        ("ListContainers", True),
        ("ContainerStatus", True),
        ("ListPodSandboxStats", True),
        ("Status", True),
        ("ImageFsInfo", True),
        ("RunPodSandbox", False),
        ("PullImage", False),
    ],
)
def test_hot_polling_rpcs_log_at_debug(rpc: str, hot: bool) -> None:
    assert is_hot(rpc) is hot


async def test_a_huge_error_message_is_clipped_so_the_client_still_gets_its_code(
    stub: pb_grpc.RuntimeServiceStub,
) -> None:
    # Found by tests/integration/test_fuzz.py: a message quoting a huge (or non-ASCII) ID
    # overflowed the client's 8 KiB trailer limit and arrived as RESOURCE_EXHAUSTED.
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="\u00e9" * 100_000))
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(excinfo.value.details() or "") < 1000
