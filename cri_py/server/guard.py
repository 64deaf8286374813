"""The server edge's one wrapper around every RPC: errors become statuses, calls become log lines.

A `CriError` becomes the gRPC status its `Code` names (the only such mapping in cri-py); any
other exception is a bug, logged with its traceback and answered as INTERNAL with a short
message (never a traceback to the client).
RPCs a servicer lacks answer UNIMPLEMENTED; malformed requests answer INVALID_ARGUMENT.
Wrapping happens once, at startup, so a call pays one extra frame and no lookups.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from cri_py.errors import Code, CriError, InvalidArgument, Unimplemented
from cri_py.log import get_logger

log = get_logger("cri_py.server")

# kubelet polls these every second or so: log them at debug level to keep the log readable.
_HOT_SUFFIXES = ("Status", "Stats", "FsInfo")
_HOT_PREFIXES = ("List", "Version")

Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Context], Any]
# Told of every call's RPC name, seconds and status code (the metrics' hook).
Observer = Callable[[str, float, grpc.StatusCode], None]


# The one mapping of our error codes (`cri_py.errors.Code`) to gRPC statuses: by name, checked
# when this module loads, so a code gRPC lacks fails at startup rather than on the first error.
STATUS_CODES: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in Code}


def is_hot(rpc: str) -> bool:
    return rpc.startswith(_HOT_PREFIXES) or rpc.endswith(_HOT_SUFFIXES)


def _outcome(rpc: str, error: BaseException | None) -> tuple[int, grpc.StatusCode, str]:
    """The log level, status code and client message for an RPC's outcome."""
    level = logging.DEBUG if is_hot(rpc) else logging.INFO
    if error is None:
        return level, grpc.StatusCode.OK, ""
    if isinstance(error, CriError):
        code = STATUS_CODES[error.code]
        # Expected misses (NotFound) stay at the call's level; other errors are warnings.
        if code != grpc.StatusCode.NOT_FOUND:
            level = max(level, logging.WARNING)
        return level, code, clip(str(error))
    return logging.ERROR, grpc.StatusCode.INTERNAL, clip(f"internal error in {rpc}: {error!r}")


# Messages often quote the request: a huge value would make the status trailer exceed what
# gRPC clients accept (8 KiB, percent-encoded: up to 12 bytes a character), and the caller
# would get RESOURCE_EXHAUSTED instead of the message.
MAX_MESSAGE_CHARS = 500


def clip(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    half = MAX_MESSAGE_CHARS // 2
    return f"{message[:half]}...<{len(message) - 2 * half} chars>...{message[-half:]}"


def _log_call(
    rpc: str, started: float, error: BaseException | None, observe: Observer | None = None
) -> tuple[grpc.StatusCode, str]:
    level, code, message = _outcome(rpc, error)
    seconds = time.perf_counter() - started
    if observe is not None:
        observe(rpc, seconds, code)
    if log.enabled_for(level):
        fields: dict[str, Any] = {
            "rpc": rpc,
            "duration_ms": round(seconds * 1000, 3),
            "code": code.name,
        }
        if message:
            fields["error"] = message
        unexpected = level == logging.ERROR  # only bugs are logged at error level
        log.log(level, "rpc", exc_info=unexpected, **fields)
    return code, message


def _decoder(rpc: str, message: type[Message]) -> Callable[[bytes], Message]:
    """Parses a request; a malformed one is the client's error, not a crash of ours."""

    def decode(data: bytes) -> Message:
        try:
            return message.FromString(data)
        except DecodeError as e:
            raise InvalidArgument(f"{rpc}: malformed {message.__name__}: {e}") from None

    return decode


def _unary(
    rpc: str,
    decode: Callable[[bytes], Message],
    method: Callable[[Any, Context], Awaitable[Any]],
    observe: Observer | None = None,
) -> Handler:
    async def handler(data: bytes, context: Context) -> Any:
        started = time.perf_counter()
        try:
            response = await method(decode(data), context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # the one place where every error is turned into a status
            code, message = _log_call(rpc, started, e, observe)
            await context.abort(code, message)
        _log_call(rpc, started, None, observe)
        return response

    return handler


def _stream(
    rpc: str,
    decode: Callable[[bytes], Message],
    method: Callable[[Any, Context], AsyncIterator[Any]],
    observe: Observer | None = None,
) -> Handler:
    async def handler(data: bytes, context: Context) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            async for item in method(decode(data), context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            code, message = _log_call(rpc, started, e, observe)
            await context.abort(code, message)
        _log_call(rpc, started, None, observe)

    return handler


class Serialized:
    """A reply already in wire form (a cached List answer): sent as it is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _serializer(message: type[Message]) -> Callable[[Any], bytes]:
    encode = message.SerializeToString

    def serialize(response: Any) -> bytes:
        return response.data if type(response) is Serialized else encode(response)

    return serialize


def _unimplemented(service: str, rpc: str) -> Callable[[Any, Context], Awaitable[Any]]:
    async def method(request: Any, context: Context) -> Any:
        raise Unimplemented(f"{service}/{rpc} is not implemented by cri-py yet")

    return method


def _unimplemented_stream(service: str, rpc: str) -> Callable[[Any, Context], AsyncIterator[Any]]:
    # A streaming RPC's method must be an async generator: `async for` over a coroutine
    # would fail (an INTERNAL instead of UNIMPLEMENTED).
    async def method(request: Any, context: Context) -> AsyncIterator[Any]:
        raise Unimplemented(f"{service}/{rpc} is not implemented by cri-py yet")
        yield  # makes this an async generator

    return method


def service_handler(
    service: ServiceDescriptor,
    messages: ModuleType,
    servicer: object,
    observe: Observer | None = None,
) -> grpc.GenericRpcHandler[Any, Any]:
    """The gRPC handler of one service, every RPC guarded; built once, at startup.

    The RPCs come from the proto's service descriptor: one that `servicer` lacks is one cri-py
    has not built, and answers UNIMPLEMENTED with a message saying so. Requests arrive as bytes
    and are parsed inside the guard so that malformed ones get INVALID_ARGUMENT.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for rpc in service.methods:
        decode = _decoder(rpc.name, getattr(messages, rpc.input_type.name))
        serialize = _serializer(getattr(messages, rpc.output_type.name))
        method: Any = getattr(servicer, rpc.name, None)
        if method is None:
            unimplemented = _unimplemented_stream if rpc.server_streaming else _unimplemented
            method = unimplemented(service.full_name, rpc.name)
        if rpc.server_streaming:
            handlers[rpc.name] = grpc.unary_stream_rpc_method_handler(
                _stream(rpc.name, decode, method, observe), response_serializer=serialize
            )
        else:
            handlers[rpc.name] = grpc.unary_unary_rpc_method_handler(
                _unary(rpc.name, decode, method, observe), response_serializer=serialize
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
