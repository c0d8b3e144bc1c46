"""What a caller is told of a failure nobody translated: that it happened, and where to look.

Servicers translate the errors they expect into a status and a sentence
(NOT_FOUND "no node named ...", PERMISSION_DENIED ...). Anything else — a
store that cannot be written, a bug — would reach the caller as gRPC's
UNKNOWN with the exception's own text: SQL statements, paths, library
internals, whatever the exception happened to hold. :class:`InternalErrors`
catches it at the boundary instead: the server's log gets the whole
traceback under a short reference, and the caller gets INTERNAL with that
reference and nothing else, so an operator can find the one in the other.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.handlers import responses, wrapped

log = logging.getLogger("plumb.server")


def _hidden(method: str, exc: Exception) -> str:
    """Log ``exc`` under a new reference; the sentence the caller gets instead."""
    reference = secrets.token_hex(4)
    log.error("internal error %s in %s", reference, method, exc_info=exc)
    return f"internal error (reference {reference}: the server's log has the details)"


def _unary(method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await context.abort(grpc.StatusCode.INTERNAL, _hidden(method, exc))

    return guarded


def _streaming(method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    async def guarded(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in responses(behavior, request, context):
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await context.abort(grpc.StatusCode.INTERNAL, _hidden(method, exc))

    return guarded


class InternalErrors(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every call's untranslated exception becomes INTERNAL with a reference (see above)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        return wrapped(
            handler,
            lambda behavior: _unary(method, behavior),
            lambda behavior: _streaming(method, behavior),
        )
