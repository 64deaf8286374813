"""runtime.v1.ImageService: not built yet; every RPC answers UNIMPLEMENTED through the guard."""

from __future__ import annotations

from cri_py.api import api_pb2_grpc as pb_grpc


class ImageServicer(pb_grpc.ImageServiceServicer):
    pass
