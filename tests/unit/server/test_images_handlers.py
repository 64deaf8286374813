"""PullImage's runtime handler: any configured one (images are shared), no other."""

from __future__ import annotations

import pytest

from cri_py.api import api_pb2 as pb
from cri_py.errors import InvalidArgument
from cri_py.server.images import _check_handler


def test_a_configured_handler_may_pull_and_an_unknown_one_is_refused() -> None:
    handlers = ("", "test-handler")
    _check_handler(pb.ImageSpec(image="busybox"), handlers)
    _check_handler(pb.ImageSpec(image="busybox", runtime_handler="test-handler"), handlers)
    with pytest.raises(InvalidArgument, match=r"unknown runtime handler 'kata' \(configured: ''"):
        _check_handler(pb.ImageSpec(image="busybox", runtime_handler="kata"), handlers)
