"""Enrollment over real TLS: tokens, CA pinning, files left on the node."""

from __future__ import annotations

import stat
import subprocess
import time
from collections.abc import Callable

import grpc
import pytest

from tests.integration.harness import Agent, Server, wait_for


def test_enroll_with_valid_token(server: Server, make_agent: Callable[[str], Agent]) -> None:
    agent = make_agent("web-1")
    result = agent.enroll(server, server.token({"role": "web", "dc": "test"}))
    assert result.returncode == 0, result.stderr
    assert "enrolled as web-1" in result.stdout
    for name in ("node.key", "node.crt", "ca.crt", "enrollment.json"):
        mode = stat.S_IMODE((agent.state_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    assert stat.S_IMODE(agent.state_dir.stat().st_mode) == 0o700
    node = server.nodes()["web-1"]
    assert node["labels"] == {"role": "web", "dc": "test"}
    assert node["connected"] is False


def test_enrolling_twice_is_harmless(server: Server, make_agent: Callable[[str], Agent]) -> None:
    agent = make_agent("web-1")
    token = server.token(uses=1)
    assert agent.enroll(server, token).returncode == 0
    key = (agent.state_dir / "node.key").read_bytes()
    again = agent.enroll(server, token)  # the token is used up: it must not be needed
    assert again.returncode == 0, again.stderr
    assert "already enrolled" in again.stdout
    assert (agent.state_dir / "node.key").read_bytes() == key


def test_used_up_token_is_refused(server: Server, make_agent: Callable[[str], Agent]) -> None:
    token = server.token(uses=1)
    assert make_agent("a").enroll(server, token).returncode == 0
    second = make_agent("b")
    result = second.enroll(server, token)
    assert result.returncode == 1
    assert "used up" in result.stderr
    assert not (second.state_dir / "node.key").exists()
    assert "b" not in server.nodes()


def test_expired_token_is_refused(server: Server, make_agent: Callable[[str], Agent]) -> None:
    reply = server.cli_json("token", "create", "--ttl", "1")
    wait_for(lambda: time.time() > reply["expires_at"], timeout=5, what="token expiry")
    result = make_agent("late").enroll(server, reply["token"])
    assert result.returncode == 1
    assert "expired" in result.stderr
    assert "late" not in server.nodes()


def test_unknown_token_is_refused(server: Server, make_agent: Callable[[str], Agent]) -> None:
    real = server.token()
    prefix, _, secret, fingerprint = real.split(".")
    forged = f"{prefix}.00000000.{secret}.{fingerprint}"
    result = make_agent("intruder").enroll(server, forged)
    assert result.returncode == 1
    assert "unknown token" in result.stderr


def test_wrong_secret_is_refused_as_unknown(
    server: Server, make_agent: Callable[[str], Agent]
) -> None:
    prefix, token_id, secret, fingerprint = server.token().split(".")
    forged = f"{prefix}.{token_id}.{'A' * len(secret)}.{fingerprint}"
    result = make_agent("intruder").enroll(server, forged)
    assert result.returncode == 1
    assert "unknown token" in result.stderr


def test_wrong_ca_fingerprint_is_refused_before_sending_anything(
    server: Server, make_agent: Callable[[str], Agent]
) -> None:
    prefix, token_id, secret, _ = server.token().split(".")
    token = f"{prefix}.{token_id}.{secret}.{'ab' * 32}"
    agent = make_agent("pinned")
    result = agent.enroll(server, token)
    assert result.returncode == 1
    assert "CA fingerprint" in result.stderr
    assert not agent.state_dir.exists()
    # The token was never sent, so it is still good for the right server.
    ok = agent.enroll(server, f"{prefix}.{token_id}.{secret}.{_fingerprint(server)}")
    assert ok.returncode == 0, ok.stderr


def _fingerprint(server: Server) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate((server.data_dir / "pki" / "ca.crt").read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


def test_malformed_token_is_refused(server: Server, make_agent: Callable[[str], Agent]) -> None:
    result = make_agent("x").enroll(server, "not-a-token")
    assert result.returncode == 1
    assert "malformed" in result.stderr


@pytest.mark.parametrize("name", ["Web_1", "-web", "web..1", "a" * 254])
def test_a_node_name_that_is_no_host_name_is_refused(
    server: Server, make_agent: Callable[[str], Agent], name: str
) -> None:
    agent = make_agent("x")
    result = subprocess.run(
        agent._cmd(
            "enroll", "--server", server.enroll_address, "--token", server.token(), f"--name={name}"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"invalid node name {name!r}" in result.stderr
    assert "Traceback" not in result.stderr
    assert server.nodes() == {}


def test_the_server_refuses_a_bad_node_name_whatever_the_client_checked(server: Server) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from protos import plumb_pb2 as pb
    from protos import plumb_pb2_grpc as pb_grpc

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Web_1")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    ca = (server.data_dir / "pki" / "ca.crt").read_bytes()
    channel = grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca))
    request = pb.EnrollRequest(
        token=server.token(),
        node_name="Web_1",
        csr_pem=csr.public_bytes(serialization.Encoding.PEM),
    )
    with pytest.raises(grpc.RpcError) as refused:
        pb_grpc.EnrollmentStub(channel).Enroll(request, timeout=30)
    error = refused.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("invalid node name 'Web_1'")
    assert server.nodes() == {}
