"""The one error hierarchy of cri-py.

Every error a client can cause or observe is a `CriError` subclass that knows its gRPC status
code. The server edge (`cri_py.server.guard`) is the only place that turns them into statuses;
anything else that escapes a handler is a bug and is answered as INTERNAL.
"""

from __future__ import annotations

import grpc


class CriError(Exception):
    """Base class: a failure with a message for the client and a gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(CriError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CriError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CriError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CriError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(CriError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(CriError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(CriError):
    code = grpc.StatusCode.UNIMPLEMENTED


class ResourceExhausted(CriError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Internal(CriError):
    code = grpc.StatusCode.INTERNAL


class ConfigError(Exception):
    """A config file or flag is wrong; the message names the file and the key."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


class StartupError(Exception):
    """The daemon cannot start (not root, socket held by a live process, ...)."""
