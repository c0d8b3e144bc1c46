"""Is the server reachable right now, over a connection opened just for asking?

Confirm-or-revert (``agent/engine.py``) asks this after a risky change
(firewall, routes). The session's long-lived stream cannot answer it: an
established connection may survive a firewall rule that refuses new ones, and
its keepalives notice a dead path only after many seconds. So every question
opens a fresh mutual-TLS channel that shares no subchannel with any other,
calls the standard gRPC health service, and closes the channel again.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.state import StateDir
from agent.tls import channel_credentials

log = logging.getLogger("plumb.agent")

#: A private subchannel pool: the check must not ride on an existing connection.
FRESH_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def server_reachable(state: StateDir, address: str, timeout_s: float) -> bool:
    """True if the server at ``address`` answers SERVING within ``timeout_s`` seconds.

    Never raises: anything that keeps the answer from arriving in time
    (refused, filtered, handshake failed, deadline) means unreachable.
    """
    try:
        credentials = channel_credentials(state)
    except OSError as exc:
        log.warning("cannot check server %s: node credentials unreadable: %s", address, exc)
        return False
    with grpc.secure_channel(address, credentials, options=FRESH_CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # wait_for_ready: a connection that is not up yet may still come up
            # within the deadline, which is what the deadline is for.
            reply = stub.Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            log.info("server %s not reachable: %s", address, _describe(exc))
            return False
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        log.info("server %s reachable but not serving (health status %s)", address, reply.status)
    return bool(serving)


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return f"{code.name if code else 'error'}: {details}"
