"""The server edge's one wrapper around every RPC: errors become statuses, calls become log lines.

A `CriError` becomes its own gRPC status; any other exception is a bug, logged with its
traceback and answered as INTERNAL with a short message (never a traceback to the client).
RPCs a servicer does not override answer UNIMPLEMENTED. Wrapping happens once, at
registration, so a call pays one extra frame and no lookups.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from cri_py.errors import CriError, Unimplemented
from cri_py.log import get_logger

log = get_logger("cri_py.server")

# kubelet polls these every second or so: log them at debug level to keep the log readable.
_HOT_SUFFIXES = ("Status", "Stats", "FsInfo")
_HOT_PREFIXES = ("List", "Version")

Handler = Callable[[Any, grpc.aio.ServicerContext], Any]


def is_hot(rpc: str) -> bool:
    return rpc.startswith(_HOT_PREFIXES) or rpc.endswith(_HOT_SUFFIXES)


def _outcome(rpc: str, error: BaseException | None) -> tuple[int, grpc.StatusCode, str]:
    """The log level, status code and client message for an RPC's outcome."""
    level = logging.DEBUG if is_hot(rpc) else logging.INFO
    if error is None:
        return level, grpc.StatusCode.OK, ""
    if isinstance(error, CriError):
        code = error.code
        # Expected misses (NotFound) stay at the call's level; other errors are warnings.
        if code != grpc.StatusCode.NOT_FOUND:
            level = max(level, logging.WARNING)
        return level, code, str(error)
    return logging.ERROR, grpc.StatusCode.INTERNAL, f"internal error in {rpc}: {error!r}"


def _log_call(rpc: str, started: float, error: BaseException | None) -> tuple[grpc.StatusCode, str]:
    level, code, message = _outcome(rpc, error)
    if log.enabled_for(level):
        fields: dict[str, Any] = {
            "rpc": rpc,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "code": code.name,
        }
        if message:
            fields["error"] = message
        unexpected = error is not None and not isinstance(error, CriError)
        log.log(level, "rpc", exc_info=unexpected, **fields)
    return code, message


def _unimplemented(service: str, rpc: str) -> Handler:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        error = Unimplemented(f"{service}/{rpc} is not implemented by cri-py yet")
        code, message = _log_call(rpc, started, error)
        await context.abort(code, message)

    return handler


def guard_unary(rpc: str, method: Callable[[Any, Any], Awaitable[Any]]) -> Handler:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            response = await method(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # the one place where every error is turned into a status
            code, message = _log_call(rpc, started, e)
            await context.abort(code, message)
        _log_call(rpc, started, None)
        return response

    return handler


def guard_stream(rpc: str, method: Callable[[Any, Any], AsyncIterator[Any]]) -> Handler:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            async for item in method(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            code, message = _log_call(rpc, started, e)
            await context.abort(code, message)
        _log_call(rpc, started, None)

    return handler


class Guarded:
    """A servicer look-alike whose every RPC attribute is the guarded form of `servicer`'s.

    `base` is the generated servicer class: a method `servicer` does not override is one cri-py
    has not built, and answers UNIMPLEMENTED with a message saying so.
    """

    def __init__(self, servicer: object, base: type, service: str) -> None:
        for rpc, default in inspect.getmembers(base, inspect.isfunction):
            if rpc.startswith("_"):
                continue
            if getattr(type(servicer), rpc) is default:
                setattr(self, rpc, _unimplemented(service, rpc))
                continue
            method = getattr(servicer, rpc)
            if inspect.isasyncgenfunction(method):
                setattr(self, rpc, guard_stream(rpc, method))
            else:
                setattr(self, rpc, guard_unary(rpc, method))
