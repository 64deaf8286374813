"""runtime.v1.ImageService over gRPC (in process, fake registry): the protobuf edge converts
requests and answers as kubelet, crictl and critest expect."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.api import api_pb2_grpc as pb_grpc
from cri_py.config import Config, ImagesConfig, RegistryHost
from cri_py.images.manifest import Platform
from cri_py.images.service import ImageService
from cri_py.server.guard import service_handler
from cri_py.server.images import ImageServicer

from .fakes import Network, Registry, simple_image

HOST = "registry.test"
APP = f"{HOST}/team/app"


@pytest.fixture
def registry() -> Registry:
    return Registry(HOST, auth="basic", users={"kube": "let"})


@pytest.fixture
async def stub(tmp_path: Path, registry: Registry) -> AsyncIterator[pb_grpc.ImageServiceStub]:
    config = Config(
        root_dir=str(tmp_path / "root"),
        images=ImagesConfig(pinned=(f"{APP}:pinned",)),
        registries={HOST: RegistryHost(plain_http=True)},
    )
    images = ImageService(
        config, transport=Network(registry).transport(), platform=Platform("linux", "amd64")
    )
    server = grpc.aio.server()
    service = pb.DESCRIPTOR.services_by_name["ImageService"]
    server.add_generic_rpc_handlers([service_handler(service, pb, ImageServicer(images))])
    address = f"unix://{tmp_path}/images.sock"
    server.add_insecure_port(address)
    await server.start()
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.ImageServiceStub(channel)
    await server.stop(None)
    await images.close()


AUTH = pb.AuthConfig(username="kube", password="let")


async def pull(stub: pb_grpc.ImageServiceStub, image: str, auth: pb.AuthConfig = AUTH) -> str:
    response = await stub.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image), auth=auth))
    return response.image_ref


async def test_pull_status_list_remove_over_grpc(
    stub: pb_grpc.ImageServiceStub, registry: Registry
) -> None:
    image = simple_image(user="1002")
    registry.push("team/app", "v1", image)
    registry.push("team/app", "pinned", image)
    image_ref = await pull(stub, f"{APP}:v1")
    assert image_ref == image.id
    status = await stub.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=f"{APP}:v1")))
    got = status.image
    assert got.id == image_ref and got.spec.image == image_ref
    assert list(got.repo_tags) == [f"{APP}:v1"]
    assert list(got.repo_digests) == [f"{APP}@{image.digest}"]
    assert got.size > 0 and got.HasField("uid") and got.uid.value == 1002 and got.username == ""
    assert not got.pinned and dict(status.info) == {}
    by_id = await stub.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image_ref)))
    assert by_id.image == got

    auth = base64.b64encode(b"kube:let").decode()
    await pull(stub, f"{APP}:pinned", pb.AuthConfig(auth=auth))
    listed = await stub.ListImages(pb.ListImagesRequest())
    (only,) = listed.images
    assert only.pinned and sorted(only.repo_tags) == [f"{APP}:pinned", f"{APP}:v1"]
    filtered = await stub.ListImages(
        pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(image=f"{APP}:nope")))
    )
    assert list(filtered.images) == []
    streamed = [r async for r in stub.StreamImages(pb.StreamImagesRequest())]
    assert [i.id for r in streamed for i in r.images] == [image_ref]

    verbose = await stub.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=image_ref), verbose=True)
    )
    info = json.loads(verbose.info["info"])
    assert info["manifest"]["config"]["digest"] == image_ref
    assert info["imageSpec"]["rootfs"]["type"] == "layers"

    fs = await stub.ImageFsInfo(pb.ImageFsInfoRequest())
    (usage,) = fs.image_filesystems
    assert usage.fs_id.mountpoint.endswith("/root/images")
    assert usage.used_bytes.value > 0 and usage.inodes_used.value > 0 and usage.timestamp > 0

    await stub.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=f"{APP}:v1")))
    await stub.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=f"{APP}:v1")))
    gone = await stub.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=f"{APP}:pinned")))
    assert not gone.HasField("image")
    assert list((await stub.ListImages(pb.ListImagesRequest())).images) == []


async def test_username_and_no_uid(stub: pb_grpc.ImageServiceStub, registry: Registry) -> None:
    registry.push("team/app", "named", simple_image(user="www-data:users"))
    await pull(stub, f"{APP}:named")
    got = (
        await stub.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=f"{APP}:named")))
    ).image
    assert not got.HasField("uid") and got.username == "www-data"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.PullImageRequest(image=pb.ImageSpec(image="Bad")), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.PullImageRequest(
                image=pb.ImageSpec(image=f"{APP}:v1"), auth=pb.AuthConfig(auth="%")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.PullImageRequest(image=pb.ImageSpec(image=f"{APP}:v1", runtime_handler="kata")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.PullImageRequest(image=pb.ImageSpec(image=f"{APP}:v1")),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            pb.PullImageRequest(image=pb.ImageSpec(image=f"{APP}:none"), auth=AUTH),
            grpc.StatusCode.NOT_FOUND,
        ),
    ],
)
async def test_pull_errors_have_their_codes(
    stub: pb_grpc.ImageServiceStub,
    registry: Registry,
    request_: pb.PullImageRequest,
    code: grpc.StatusCode,
) -> None:
    registry.push("team/app", "v1", simple_image())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PullImage(request_)
    assert caught.value.code() == code
    assert caught.value.details()


async def test_status_and_remove_need_an_image(stub: pb_grpc.ImageServiceStub) -> None:
    for call in (
        stub.ImageStatus(pb.ImageStatusRequest()),
        stub.RemoveImage(pb.RemoveImageRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
