"""Identity comes from the certificate, checked in one place (server/auth.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server.pki import PKI, ROLE_NODE, cert_pem, create_ca, issue_keypair, key_pem
from tests.integration.harness import Agent, Server

TIMEOUT = 10


def _channel(
    server: Server, address: str, key: bytes | None = None, cert: bytes | None = None
) -> grpc.Channel:
    ca = (server.data_dir / "pki" / "ca.crt").read_bytes()
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    # The server certificate names localhost/127.0.0.1; the address is 127.0.0.1.
    return grpc.secure_channel(address, credentials)


def _node_channel(server: Server, agent: Agent) -> grpc.Channel:
    return _channel(
        server,
        server.agent_address,
        (agent.state_dir / "node.key").read_bytes(),
        (agent.state_dir / "node.crt").read_bytes(),
    )


def _session(channel: grpc.Channel, *messages: pb.AgentMessage) -> list[pb.ServerMessage]:
    replies = []
    call = pb_grpc.AgentStub(channel).Session(iter(messages), timeout=TIMEOUT)
    for reply in call:
        replies.append(reply)
        if reply.HasField("welcome") and len(messages) == 1:
            break
    return replies


def _code(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    error = excinfo.value
    assert isinstance(error, grpc.Call)
    return error.code()


@pytest.fixture
def two_nodes(enrolled: Callable[..., Agent]) -> Iterator[tuple[Agent, Agent]]:
    yield enrolled("node-a"), enrolled("node-b")


def test_node_gets_its_own_session(server: Server, two_nodes: tuple[Agent, Agent]) -> None:
    a, _ = two_nodes
    replies = _session(
        _node_channel(server, a), pb.AgentMessage(hello=pb.Hello(node_name="node-a"))
    )
    assert replies[0].HasField("welcome")


def test_node_cannot_open_another_nodes_session(
    server: Server, two_nodes: tuple[Agent, Agent]
) -> None:
    a, _ = two_nodes
    with pytest.raises(grpc.RpcError) as excinfo:
        _session(_node_channel(server, a), pb.AgentMessage(hello=pb.Hello(node_name="node-b")))
    assert _code(excinfo) == grpc.StatusCode.PERMISSION_DENIED
    assert "may not open a session as 'node-b'" in excinfo.value.details()  # type: ignore[attr-defined]


def test_node_cannot_report_as_another_node(server: Server, two_nodes: tuple[Agent, Agent]) -> None:
    a, _ = two_nodes
    forged = pb.Report(id="forged-1", node_name="node-b", revision=1)
    with pytest.raises(grpc.RpcError) as excinfo:
        _session(
            _node_channel(server, a),
            pb.AgentMessage(hello=pb.Hello(node_name="node-a")),
            pb.AgentMessage(report=forged),
        )
    assert _code(excinfo) == grpc.StatusCode.PERMISSION_DENIED
    assert "may not report as 'node-b'" in excinfo.value.details()  # type: ignore[attr-defined]
    assert server.cli("report", "node-b", check=False).returncode == 1  # nothing stored


def test_node_certificate_cannot_call_admin(server: Server, two_nodes: tuple[Agent, Agent]) -> None:
    a, _ = two_nodes
    with pytest.raises(grpc.RpcError) as excinfo:
        pb_grpc.AdminStub(_node_channel(server, a)).ListNodes(
            pb.ListNodesRequest(), timeout=TIMEOUT
        )
    assert _code(excinfo) == grpc.StatusCode.PERMISSION_DENIED


def test_operator_certificate_cannot_open_a_session(server: Server) -> None:
    operator = server.data_dir / "operator"
    channel = _channel(
        server,
        server.agent_address,
        (operator / "operator.key").read_bytes(),
        (operator / "operator.crt").read_bytes(),
    )
    with pytest.raises(grpc.RpcError) as excinfo:
        _session(channel, pb.AgentMessage(hello=pb.Hello(node_name="operator")))
    assert _code(excinfo) == grpc.StatusCode.PERMISSION_DENIED


def test_client_without_certificate_is_refused(server: Server) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        pb_grpc.AdminStub(_channel(server, server.agent_address)).ListNodes(
            pb.ListNodesRequest(), timeout=TIMEOUT
        )
    assert _code(excinfo) == grpc.StatusCode.UNAVAILABLE  # refused at the TLS handshake


def test_certificate_from_another_ca_is_refused(server: Server) -> None:
    rogue = issue_keypair(create_ca("Rogue CA"), "node-a", ROLE_NODE)
    channel = _channel(server, server.agent_address, key_pem(rogue.key), cert_pem(rogue.cert))
    with pytest.raises(grpc.RpcError) as excinfo:
        _session(channel, pb.AgentMessage(hello=pb.Hello(node_name="node-a")))
    assert _code(excinfo) == grpc.StatusCode.UNAVAILABLE


def test_enrollment_listener_serves_no_identity_calls(server: Server, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        pb_grpc.AdminStub(_channel(server, server.enroll_address)).ListNodes(
            pb.ListNodesRequest(), timeout=TIMEOUT
        )
    assert _code(excinfo) == grpc.StatusCode.UNAUTHENTICATED


def test_a_certificate_of_a_node_the_server_does_not_know_opens_no_session(
    server: Server,
) -> None:
    # Signed by the server's own CA, so the handshake succeeds; the store has no such node.
    ca = PKI(server.data_dir / "pki").load("ca")
    ghost = issue_keypair(ca, "ghost", ROLE_NODE)
    channel = _channel(server, server.agent_address, key_pem(ghost.key), cert_pem(ghost.cert))
    hello = pb.AgentMessage(hello=pb.Hello(node_name="ghost"))
    with pytest.raises(grpc.RpcError) as excinfo:
        _session(channel, hello)
    assert _code(excinfo) == grpc.StatusCode.PERMISSION_DENIED
    error = excinfo.value
    assert isinstance(error, grpc.Call) and error.details() == "node 'ghost' is not enrolled"
