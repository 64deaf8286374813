"""The one error hierarchy of cri-py.

Every error a client can cause or observe is a `CriError` subclass that names its status `Code`
(our own enum, named as gRPC names them). This module imports no grpc, so the pure core, the
shim and the CLI can raise these errors without pulling grpc in. The server edge
(`cri_py.server.guard`) is the only place that maps a `Code` to a gRPC status; anything else
that escapes a handler is a bug and is answered as INTERNAL.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """The status a `CriError` asks for; each name is the gRPC status code of the same name."""

    UNKNOWN = enum.auto()
    INVALID_ARGUMENT = enum.auto()
    NOT_FOUND = enum.auto()
    ALREADY_EXISTS = enum.auto()
    FAILED_PRECONDITION = enum.auto()
    DEADLINE_EXCEEDED = enum.auto()
    UNAVAILABLE = enum.auto()
    UNIMPLEMENTED = enum.auto()
    RESOURCE_EXHAUSTED = enum.auto()
    INTERNAL = enum.auto()


class CriError(Exception):
    """Base class: a failure with a message for the client and the status code it gets."""

    code: Code = Code.UNKNOWN


class InvalidArgument(CriError):
    code = Code.INVALID_ARGUMENT


class NotFound(CriError):
    code = Code.NOT_FOUND


class AlreadyExists(CriError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(CriError):
    code = Code.FAILED_PRECONDITION


class DeadlineExceeded(CriError):
    code = Code.DEADLINE_EXCEEDED


class Unavailable(CriError):
    code = Code.UNAVAILABLE


class Unimplemented(CriError):
    code = Code.UNIMPLEMENTED


class ResourceExhausted(CriError):
    code = Code.RESOURCE_EXHAUSTED


class Internal(CriError):
    code = Code.INTERNAL


class ConfigError(Exception):
    """A config file or flag is wrong; the message names the file and the key."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


class StartupError(Exception):
    """The daemon cannot start (not root, socket held by a live process, ...)."""
