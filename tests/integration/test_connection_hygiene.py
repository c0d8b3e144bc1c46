"""Nobody holds the server's connections by opening them and doing nothing.

A real server on loopback: hundreds of connections that finished TLS and
HTTP/2 and then sit idle, and dozens that never finish their TLS handshake,
are all closed by the server within its limits (IDLE_CONNECTION_S,
HANDSHAKE_S, plus a margin), and while they are open an operator's call and
an enrollment are still answered at once.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import HANDSHAKE_S, IDLE_CONNECTION_S
from server.sources import MAX_CALLS_PER_SOURCE
from tests.integration.harness import Agent, Server, wait_for

#: What the server sends first on an HTTP/2 connection is its SETTINGS; the
#: client's preface and an empty SETTINGS frame make the connection live.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def address(of: str) -> tuple[str, int]:
    host, port = of.rsplit(":", 1)
    return host, int(port)


def idle_http2(server: Server) -> socket.socket:
    """A TLS connection to the enrollment port that speaks HTTP/2 and then nothing."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    connection = context.wrap_socket(socket.create_connection(address(server.enroll_address)))
    connection.sendall(PREFACE)
    return connection


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server has closed ``connection`` (whatever it sent first is read away)."""
    connection.settimeout(0.01)
    try:
        while connection.recv(65536):
            pass
    except (TimeoutError, ssl.SSLWantReadError):
        return False
    except OSError:  # reset
        return True
    return True


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for connection in opened:
            connection.close()


def test_idle_and_half_open_connections_are_closed_and_starve_nobody(
    server: Server, sockets: list[socket.socket]
) -> None:
    idle = [idle_http2(server) for _ in range(200)]
    half_open = [
        socket.create_connection(address(a))
        for a in (server.enroll_address, server.agent_address)
        for _ in range(20)
    ]
    sockets.extend(idle + half_open)

    # Still answered while all of them are open.
    assert server.cli("nodes").returncode == 0
    agent = Agent("late-1", server.data_dir.parent / "agents")
    enrolled = agent.enroll(server, server.token())
    assert enrolled.returncode == 0, enrolled.stderr

    # The deadlines run from the last one opened: each is closed that long after its own start.
    wait_for(
        lambda: all(closed_by_server(c) for c in half_open),
        timeout=HANDSHAKE_S + 10,
        what="half-open connections to be closed",
    )
    wait_for(
        lambda: all(closed_by_server(c) for c in idle),
        timeout=IDLE_CONNECTION_S + 10,
        what="idle connections to be closed",
    )


def test_one_source_holds_at_most_so_many_calls_at_once(server: Server) -> None:
    """Long calls (health watches, on the port anyone may reach) up to the limit, then a refusal.

    Agent sessions are not counted (a fleet behind one NAT is one source):
    tests/integration/test_revocation.py holds many at once.
    """
    ca = (server.data_dir / "pki" / "ca.crt").read_bytes()
    channel = grpc.secure_channel(
        server.enroll_address,
        grpc.ssl_channel_credentials(ca),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    health = health_pb2_grpc.HealthStub(channel)
    watches = []
    try:
        for _ in range(MAX_CALLS_PER_SOURCE):
            watch = health.Watch(health_pb2.HealthCheckRequest())
            next(watch)  # SERVING: the call is in flight on the server
            watches.append(watch)
        with pytest.raises(grpc.RpcError) as refused:
            next(health.Watch(health_pb2.HealthCheckRequest()))
        error = refused.value
        assert isinstance(error, grpc.Call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == (
            f"too many calls in flight from 127.0.0.1: at most {MAX_CALLS_PER_SOURCE} at once; "
            "wait for some to finish"
        )
        # One finished, one more may start.
        watches.pop().cancel()
        wait_for(lambda: _watch_opens(health), 10, "a call let in again")
    finally:
        for watch in watches:
            watch.cancel()
        channel.close()


def _watch_opens(health: health_pb2_grpc.HealthStub) -> bool:
    watch = health.Watch(health_pb2.HealthCheckRequest())
    try:
        next(watch)
    except grpc.RpcError:
        return False
    watch.cancel()
    return True
