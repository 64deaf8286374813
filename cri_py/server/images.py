"""runtime.v1.ImageService: protobuf in, `cri_py.images.service` calls, protobuf out.

The only place image messages meet our own types; errors are mapped by the guard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection

from cri_py.api import api_pb2 as pb
from cri_py.errors import InvalidArgument
from cri_py.images.endpoints import Credentials
from cri_py.images.service import ImageService, ImageView
from cri_py.server.guard import Context

# StreamImages sends the list in chunks of this many images (KEP-5825 leaves it to runtimes).
STREAM_CHUNK = 100


def to_image(view: ImageView) -> pb.Image:
    image = pb.Image(
        id=view.id,
        repo_tags=view.repo_tags,
        repo_digests=view.repo_digests,
        size=view.size,
        username=view.username,
        # The same spec whatever name the image was looked up by (critest compares them).
        spec=pb.ImageSpec(image=view.id),
        pinned=view.pinned,
    )
    if view.uid is not None:
        image.uid.value = view.uid
    return image


def to_credentials(auth: pb.AuthConfig) -> Credentials | None:
    credentials = Credentials.create(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )
    return credentials or None


def _check_handler(spec: pb.ImageSpec, handlers: Collection[str]) -> None:
    # "If the runtime handler is unknown, the request should be rejected". Every handler
    # shares the one image store, so a known handler changes nothing else.
    if spec.runtime_handler not in handlers:
        raise InvalidArgument(
            f"image {spec.image}: unknown runtime handler {spec.runtime_handler!r} "
            f"(configured: {', '.join(repr(h) for h in handlers)})"
        )


class ImageServicer:
    """runtime.v1.ImageService over an `ImageService`."""

    def __init__(self, images: ImageService, handlers: Collection[str] = ("",)) -> None:
        self._images = images
        # The runtime handlers' names (config `runtimes`, and "").
        self._handlers = tuple(handlers)

    async def ListImages(
        self, request: pb.ListImagesRequest, context: Context
    ) -> pb.ListImagesResponse:
        views = self._images.list_images(request.filter.image.image)
        return pb.ListImagesResponse(images=[to_image(v) for v in views])

    async def StreamImages(
        self, request: pb.StreamImagesRequest, context: Context
    ) -> AsyncIterator[pb.StreamImagesResponse]:
        images = [to_image(v) for v in self._images.list_images(request.filter.image.image)]
        for start in range(0, len(images), STREAM_CHUNK):
            yield pb.StreamImagesResponse(images=images[start : start + STREAM_CHUNK])

    async def ImageStatus(
        self, request: pb.ImageStatusRequest, context: Context
    ) -> pb.ImageStatusResponse:
        if not request.image.image:
            raise InvalidArgument("ImageStatus: image spec has no image")
        view = self._images.status(request.image.image)
        if view is None:
            return pb.ImageStatusResponse()
        info = self._images.verbose_info(view.id) if request.verbose else {}
        return pb.ImageStatusResponse(image=to_image(view), info=info)

    async def PullImage(
        self, request: pb.PullImageRequest, context: Context
    ) -> pb.PullImageResponse:
        _check_handler(request.image, self._handlers)
        credentials = to_credentials(request.auth) if request.HasField("auth") else None
        image_id = await self._images.pull(request.image.image, credentials)
        return pb.PullImageResponse(image_ref=image_id)

    async def RemoveImage(
        self, request: pb.RemoveImageRequest, context: Context
    ) -> pb.RemoveImageResponse:
        """Removes the image and all its tags; unknown images are fine. An image that
        containers use is removed too (as containerd does): containers keep their layers
        through leases (`ImageService.lease_layers`) until they are removed themselves."""
        if not request.image.image:
            raise InvalidArgument("RemoveImage: image spec has no image")
        await self._images.remove(request.image.image)
        return pb.RemoveImageResponse()

    async def ImageFsInfo(
        self, request: pb.ImageFsInfoRequest, context: Context
    ) -> pb.ImageFsInfoResponse:
        usage = self._images.fs_usage()
        return pb.ImageFsInfoResponse(
            image_filesystems=[
                pb.FilesystemUsage(
                    timestamp=usage.timestamp_ns,
                    fs_id=pb.FilesystemIdentifier(mountpoint=usage.mountpoint),
                    used_bytes=pb.UInt64Value(value=usage.used_bytes),
                    inodes_used=pb.UInt64Value(value=usage.inodes_used),
                )
            ]
        )
