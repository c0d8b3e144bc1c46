"""Rebuild a gRPC method handler around its behaviour: the one way interceptors wrap calls.

gRPC has four handler shapes (unary or streaming request and response); an
interceptor that wraps what a call does must rebuild the handler in the same
shape with the same codec. :func:`wrapped` does it once for all of them,
given one wrapper for behaviours that return (unary responses) and one for
those that yield (streaming responses).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

#: Takes a behaviour ``(request, context) -> awaitable`` and returns one like it.
UnaryWrapper = Callable[[Callable[..., Any]], Callable[..., Any]]
#: Takes a behaviour ``(request, context) -> async iterator`` and returns one like it.
StreamWrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def wrapped(
    handler: grpc.RpcMethodHandler, unary: UnaryWrapper, streaming: StreamWrapper
) -> grpc.RpcMethodHandler:
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **codec)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **codec)
    return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)


async def responses(behavior: Callable[..., Any], request: Any, context: Any) -> AsyncIterator[Any]:
    """What a streaming behaviour answers, however it answers.

    A servicer may yield its responses (an async generator) or write them
    with ``context.write`` and return (a coroutine: gRPC's own health
    service does): a wrapper iterates the one and awaits the other.
    """
    answered = behavior(request, context)
    if inspect.isawaitable(answered):
        await answered
        return
    async for response in answered:
        yield response
