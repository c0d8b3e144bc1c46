"""How many calls one source address may have in flight at once.

Idle connections are closed (server/app.py), but a connection with calls on
it is not idle: one address holding thousands of cheap long calls (a health
watch, a slow enrollment) would hold the server's memory and its event loop
as surely as idle connections did. :class:`SourceLimits` counts each source
address's calls in flight and refuses one beyond MAX_CALLS_PER_SOURCE at once,
with RESOURCE_EXHAUSTED and a sentence saying so, before any other work.

Agent sessions are not counted: each is an authenticated node's one session
(server/hub.py ends a second), and a whole fleet behind one NAT shares a
source address. Enrollment attempts have their own rate per source
(server/enrollment.py).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from server.handlers import responses, wrapped

#: Calls one address may have in flight at once (an operator's CLI has one; a
#: script running many in parallel, a few dozen).
MAX_CALLS_PER_SOURCE = 64
#: Long-lived by design and one per node: never counted.
UNCOUNTED = frozenset({"/plumb.v1.Agent/Session"})


def source_of(peer: str) -> str:
    """``ipv4:10.0.0.5:51234`` → ``10.0.0.5``; ``ipv6:[::1]:51234`` → ``::1``."""
    address = peer.partition(":")[2]
    host = address.rpartition(":")[0] or address
    return host.strip("[]")


class SourceLimits(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, max_calls: int = MAX_CALLS_PER_SOURCE) -> None:
        self.max_calls = max_calls
        self._in_flight: collections.Counter[str] = collections.Counter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method in UNCOUNTED:
            return handler
        return wrapped(handler, self._unary, self._streaming)

    @contextlib.contextmanager
    def _counted(self, source: str) -> Iterator[bool]:
        """One call of ``source`` in flight while the block runs; False if it may not be."""
        if self._in_flight[source] >= self.max_calls:
            yield False
            return
        self._in_flight[source] += 1
        try:
            yield True
        finally:
            self._in_flight[source] -= 1
            if not self._in_flight[source]:
                del self._in_flight[source]

    def _refusal(self, source: str) -> str:
        return (
            f"too many calls in flight from {source}: at most {self.max_calls} at once; "
            "wait for some to finish"
        )

    def _unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            source = source_of(context.peer())
            with self._counted(source) as allowed:
                if not allowed:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal(source))
                return await behavior(request, context)

        return limited

    def _streaming(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
        async def limited(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            source = source_of(context.peer())
            with self._counted(source) as allowed:
                if not allowed:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal(source))
                async for response in responses(behavior, request, context):
                    yield response

        return limited
