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

import pytest

from server.app import HANDSHAKE_S, IDLE_CONNECTION_S
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
