"""Revocation that bites at once: the store's serial is the only one a node may use.

A real server, real agents and the test's own streams (with the nodes' real
keys and certificates) over mutual TLS on loopback. Findings of the security
review this answers (issue 11): a second certificate for a node was accepted;
after a node was removed and its name enrolled again, the old certificate
still connected and got the new node's catalog; a live session kept working
28 s past its certificate's expiry; nodes could not be removed; one node
could open thousands of streams.
"""

from __future__ import annotations

import datetime
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server.pki import PKI, ROLE_NODE, KeyPair, cert_pem, generate_key, issue_keypair, key_pem
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

TIMEOUT = 10

MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /etc/motd, content: "managed\\n"}}
"""

FOR_WEB_1 = """\
name: web-1-only
target: {names: [web-1]}
resources:
  - {kind: file, name: secret, spec: {path: /etc/secret, content: "for web-1\\n"}}
"""


# ------------------------------------------------------------ streams of the test's own


def channel(server: Server, key: bytes, cert: bytes) -> grpc.Channel:
    ca = (server.data_dir / "pki" / "ca.crt").read_bytes()
    return grpc.secure_channel(server.agent_address, grpc.ssl_channel_credentials(ca, key, cert))


def node_channel(server: Server, agent: Agent) -> grpc.Channel:
    state = agent.state_dir
    return channel(server, (state / "node.key").read_bytes(), (state / "node.crt").read_bytes())


def pair_channel(server: Server, pair: KeyPair) -> grpc.Channel:
    return channel(server, key_pem(pair.key), cert_pem(pair.cert))


def admin(server: Server) -> pb_grpc.AdminStub:
    operator = server.data_dir / "operator"
    keys = (operator / "operator.key").read_bytes(), (operator / "operator.crt").read_bytes()
    return pb_grpc.AdminStub(channel(server, *keys))


def serial_of(agent: Agent) -> str:
    cert = x509.load_pem_x509_certificate((agent.state_dir / "node.crt").read_bytes())
    return format(cert.serial_number, "x")


class Stream:
    """A Session opened as node ``name`` would: hello first, replies read in a thread.

    Records when (monotonic and wall clock) and how the server ended it.
    """

    def __init__(self, via: grpc.Channel, name: str = "web-1") -> None:
        self.name = name
        self.requests: queue.Queue[pb.AgentMessage | None] = queue.Queue()
        self.requests.put(pb.AgentMessage(hello=pb.Hello(node_name=name)))
        self.call = pb_grpc.AgentStub(via).Session(iter(self.requests.get, None))
        self.replies: list[pb.ServerMessage] = []
        self.error: grpc.RpcError | None = None
        self.ended_at: float | None = None  # time.monotonic()
        self.ended_wall: float | None = None  # time.time()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.replies.append(reply)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended_wall, self.ended_at = time.time(), time.monotonic()

    def welcomed(self) -> bool:
        return any(r.HasField("welcome") for r in self.replies)

    def ended(self) -> bool:
        return self.ended_at is not None

    def send(self, message: pb.AgentMessage) -> None:
        self.requests.put(message)

    def status(self) -> tuple[grpc.StatusCode | None, str]:
        error = self.error
        if not isinstance(error, grpc.Call):
            return None, ""
        return error.code(), str(error.details())

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self._thread.join(5)


@pytest.fixture
def streams() -> Iterator[Callable[..., Stream]]:
    opened: list[Stream] = []

    def open_stream(via: grpc.Channel, name: str = "web-1") -> Stream:
        stream = Stream(via, name)
        opened.append(stream)
        return stream

    try:
        yield open_stream
    finally:
        for stream in opened:
            stream.close()


def refused(via: grpc.Channel, name: str = "web-1") -> tuple[grpc.StatusCode, str]:
    """The status of a session that must be refused (a welcome fails the test)."""
    hello = pb.AgentMessage(hello=pb.Hello(node_name=name))
    with pytest.raises(grpc.RpcError) as excinfo:
        for reply in pb_grpc.AgentStub(via).Session(iter([hello]), timeout=TIMEOUT):
            assert not reply.HasField("welcome"), "the server welcomed the session"
    error = excinfo.value
    assert isinstance(error, grpc.Call)
    return error.code(), str(error.details())


def welcome_and_catalog(via: grpc.Channel, name: str = "web-1") -> list[pb.ServerMessage]:
    """A session's first replies: the welcome, and the catalog if there is one."""
    hello = pb.AgentMessage(hello=pb.Hello(node_name=name))
    replies: list[pb.ServerMessage] = []
    for reply in pb_grpc.AgentStub(via).Session(iter([hello]), timeout=TIMEOUT):
        replies.append(reply)
        welcome = replies[0].welcome
        if reply.HasField("catalog") or welcome.latest_revision == 0:
            break
    return replies


# ------------------------------------------------------------ revoke


def test_revoking_a_node_ends_its_live_session_within_a_second(
    server: Server, enrolled: Callable[..., Agent], streams: Callable[..., Stream]
) -> None:
    agent = enrolled("web-1")
    live = streams(node_channel(server, agent))
    wait_for(live.welcomed, what="the session")

    started = time.monotonic()
    reply = admin(server).RevokeNode(pb.RevokeNodeRequest(node_name="web-1"), timeout=TIMEOUT)
    wait_for(live.ended, timeout=10, what="the session to end")
    assert live.ended_at is not None and live.ended_at - started < 1.0

    code, details = live.status()
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith(f"the certificate of node web-1 (serial {serial_of(agent)}) was ")
    assert details.endswith(": re-enroll the node")
    assert (reply.node_name, reply.cert_serial) == ("web-1", serial_of(agent))
    assert (reply.already_revoked, reply.sessions_ended) == (False, 1)
    # Refused from now on, on a new connection as on the old one.
    assert refused(node_channel(server, agent))[0] == grpc.StatusCode.UNAUTHENTICATED
    node = server.nodes()["web-1"]
    assert (node["connected"], node["revoked_at"]) == (False, reply.revoked_at)


def test_a_revoked_node_stays_listed_and_its_agent_stays_out(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    agent.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    assert server.push(write(tmp_path / "motd.yaml", MOTD)).returncode == 0

    revoked = server.cli_json("node", "revoke", "web-1")
    assert revoked == {
        "node": "web-1",
        "cert_serial": serial_of(agent),
        "revoked_at": revoked["revoked_at"],
        "already_revoked": False,
        "sessions_ended": 1,
    }
    assert isinstance(revoked["revoked_at"], float)
    # Cut, then refused again when it reconnects.
    wait_for(
        lambda: agent.logs().count("UNAUTHENTICATED: the certificate of node web-1") >= 2,
        what="the agent refused twice",
    )
    node = server.nodes()["web-1"]
    assert (node["connected"], node["revoked_at"]) == (False, revoked["revoked_at"])
    listed = server.cli("nodes")
    assert "revoked" in listed.stdout.splitlines()[1]
    assert "web-1: its certificate was revoked at " in listed.stderr
    # Still a node of the fleet: what it should have is still expected of it.
    compliance = json.loads(server.cli("compliance", "--json", check=False).stdout)
    assert compliance["fleet"]["expected"] == 1
    assert ("node", "web-1") in {(r["scope"], r["name"]) for r in compliance["rows"]}

    again = server.cli("node", "revoke", "web-1")
    assert again.returncode == 0
    assert again.stdout.startswith("node web-1 was already revoked at ")


def test_a_second_certificate_for_a_node_is_refused(
    server: Server, enrolled: Callable[..., Agent], make_agent: Callable[[str], Agent]
) -> None:
    agent = enrolled("web-1")
    # The server never signs a second one: enrolling the name again is refused ...
    clone = make_agent("clone")
    clone.name = "web-1"
    enrolling = clone.enroll(server, server.token())
    assert enrolling.returncode == 1 and "already enrolled" in enrolling.stderr
    # ... so the second is made with the CA's key, as whoever holds it could.
    ca = PKI(server.data_dir / "pki").load("ca")
    second = issue_keypair(ca, "web-1", ROLE_NODE)
    code, details = refused(pair_channel(server, second))
    serial = format(second.cert.serial_number, "x")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details == (
        f"certificate serial {serial} is not node web-1's current one "
        "(revoked, replaced or renewed): re-enroll the node"
    )
    # The node's own certificate is the one that works.
    assert welcome_and_catalog(node_channel(server, agent))[0].HasField("welcome")


# ------------------------------------------------------------ node rm, and the name again


def test_after_node_rm_and_a_new_enrollment_of_the_name_the_old_certificate_is_refused(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    old = enrolled("web-1", role="web")
    old_serial = serial_of(old)
    removed = server.cli_json("node", "rm", "web-1")
    assert (removed["node"], removed["cert_serial"]) == ("web-1", old_serial)

    new = Agent("web-1", tmp_path / "another-host")
    try:
        enrolling = new.enroll(server, server.token({"role": "db"}))
        assert enrolling.returncode == 0, enrolling.stderr
        assert serial_of(new) != old_serial
        assert server.push(write(tmp_path / "only.yaml", FOR_WEB_1)).returncode == 0

        code, details = refused(node_channel(server, old))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert details == (
            f"certificate serial {old_serial} is not node web-1's current one "
            "(revoked, replaced or renewed): re-enroll the node"
        )
        replies = welcome_and_catalog(node_channel(server, new))
        assert [r.WhichOneof("kind") for r in replies] == ["welcome", "catalog"]
        assert b"for web-1" in replies[1].catalog.payload
        assert server.nodes()["web-1"]["labels"] == {"role": "db"}
    finally:
        new.stop()


def test_node_rm_keeps_the_history_and_leaves_nodes_and_compliance(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = [enrolled("web-1"), enrolled("web-2")]
    for agent in agents:
        (agent.root / "etc").mkdir()
    assert server.push(write(tmp_path / "motd.yaml", MOTD)).returncode == 0
    for agent in agents:
        assert agent.run_once().returncode == 0
    agents[1].path("/etc/motd").write_text("changed by hand\n")
    assert agents[1].run_once().returncode == 0  # repaired: a drift event
    report = server.cli_json("report", "web-2")
    drift = server.cli_json("drift", "--node", "web-2")["events"]
    assert [e["status"] for e in drift] == ["repaired"]
    assert server.cli_json("compliance")["fleet"]["expected"] == 2

    removed = server.cli("node", "rm", "web-2")
    assert removed.returncode == 0, removed.stderr
    serial = serial_of(agents[1])
    assert removed.stdout.startswith(f"removed node web-2 (certificate serial {serial} revoked")

    assert sorted(server.nodes()) == ["web-1"]
    every = {n["name"]: n for n in server.cli_json("nodes", "--all")["nodes"]}
    assert sorted(every) == ["web-1", "web-2"]
    assert every["web-2"]["decommissioned_at"] is not None
    assert every["web-2"]["revoked_at"] is not None and every["web-1"]["revoked_at"] is None
    assert every["web-2"]["compliance"]["expected"] == 0
    compliance = server.cli_json("compliance")
    assert compliance["fleet"]["expected"] == 1
    assert ("node", "web-2") not in {(r["scope"], r["name"]) for r in compliance["rows"]}
    # Its history stays.
    assert server.cli_json("report", "web-2")["id"] == report["id"]
    assert server.cli_json("drift", "--node", "web-2")["events"] == drift
    # It cannot connect; a manual run on it says why.
    once = agents[1].run_once()
    assert "web-2 was removed (plumb node rm)" in once.stderr
    assert server.cli_json("report", "web-2")["id"] == report["id"]

    again = server.cli_json("node", "rm", "web-2")
    assert (again["already_removed"], again["sessions_ended"]) == (True, 0)
    assert again["decommissioned_at"] == every["web-2"]["decommissioned_at"]


@pytest.mark.parametrize("action", ["revoke", "rm"])
def test_an_unknown_node_is_a_clear_error(server: Server, action: str) -> None:
    result = server.cli("node", action, "web-9", check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "plumb: no node named 'web-9' is enrolled (plumb nodes --all lists every node)\n"
    )
    assert server.cli("node", action, check=False).returncode == 2  # no NAME: usage


# ------------------------------------------------------------ certificate expiry


def short_lived(ca: KeyPair, name: str, seconds: float) -> KeyPair:
    """A node certificate from the server's CA that expires in ``seconds``."""
    key = generate_key()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_NODE),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plumb"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(seconds=seconds))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def test_a_session_ends_when_its_certificate_expires(
    server: Server, enrolled: Callable[..., Agent], streams: Callable[..., Stream]
) -> None:
    enrolled("web-1")
    ca = PKI(server.data_dir / "pki").load("ca")
    brief = short_lived(ca, "web-1", seconds=12)
    not_after = brief.cert.not_valid_after_utc.timestamp()
    # The store learns the new certificate's serial as a renewal would record it.
    server.stop()
    db = sqlite3.connect(server.data_dir / "plumb.db")
    try:
        with db:
            serial = format(brief.cert.serial_number, "x")
            db.execute("UPDATE nodes SET cert_serial = ? WHERE name = 'web-1'", (serial,))
    finally:
        db.close()
    server.start()

    via = pair_channel(server, brief)
    live = streams(via)
    wait_for(live.welcomed, what="the session")
    assert time.time() < not_after, "too slow to test: the certificate expired already"
    wait_for(live.ended, timeout=not_after - time.time() + 5, what="the session to end")
    assert live.ended_wall is not None
    assert not_after <= live.ended_wall < not_after + 1.0
    code, details = live.status()
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith(f"the certificate of node 'web-1' (serial {serial}) expired at ")
    # The connection outlives the handshake's check: no new session on it either.
    code, details = refused(via)
    assert code == grpc.StatusCode.UNAUTHENTICATED and " expired at " in details


# ------------------------------------------------------------ one session per node


def test_a_second_session_of_a_node_replaces_the_first(
    server: Server, enrolled: Callable[..., Agent], streams: Callable[..., Stream]
) -> None:
    agent = enrolled("web-1")
    via = node_channel(server, agent)
    many = []
    for _ in range(20):  # on one connection, as the review's 3000 streams were
        many.append(streams(via))
        wait_for(many[-1].welcomed, what="a session")
    *older, newest = many
    wait_for(lambda: all(s.ended() for s in older), what="the older sessions to end")
    assert {s.status() for s in older} == {
        (grpc.StatusCode.ABORTED, "replaced by a newer session of this node")
    }
    # The newest works on: its report is stored and acknowledged.
    newest.send(pb.AgentMessage(report=pb.Report(id="r-1", node_name="web-1", revision=0)))
    wait_for(lambda: any(r.HasField("ack") for r in newest.replies), what="the ack")
    assert not newest.ended() and server.nodes()["web-1"]["connected"]


def test_an_agent_that_reconnects_takes_the_dead_sessions_place_once(
    server: Server, enrolled: Callable[..., Agent], streams: Callable[..., Stream], tmp_path: Path
) -> None:
    """Its old stream is dead but the server has not noticed: no ping-pong follows."""
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    dead = streams(node_channel(server, agent))  # never read again: as good as dead
    wait_for(dead.welcomed, what="the first session")
    agent.start()
    wait_for(dead.ended, what="the old session to be replaced")
    assert dead.status()[0] == grpc.StatusCode.ABORTED
    assert server.push(write(tmp_path / "motd.yaml", MOTD)).returncode == 0
    motd = agent.path("/etc/motd")
    wait_for(lambda: motd.exists() and motd.read_text() == "managed\n", what="converged")
    wait_for(lambda: server.cli_json("report", "web-1")["trigger"] == "push", what="reported")
    assert agent.logs().count("session established") == 1
    assert "taken over" not in agent.logs()
    assert server.nodes()["web-1"]["connected"]


def test_a_run_once_beside_the_daemon_gets_the_session_and_gives_it_back(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    agent.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    assert server.push(write(tmp_path / "motd.yaml", MOTD)).returncode == 0
    motd = agent.path("/etc/motd")
    wait_for(lambda: motd.exists(), what="converged")

    once = agent.run_once()
    assert once.returncode == 0, once.stderr
    assert "no session" not in once.stderr and "did not answer" not in once.stderr
    # Its report was acknowledged (stored) before it exited.
    assert server.cli_json("report", "web-1")["trigger"] == "manual"
    assert agent.status()["spooled_reports"] == 0
    # The daemon takes the session back, once, and serves pushes again.
    wait_for(lambda: agent.logs().count("session established") == 2, what="the daemon back")
    assert agent.logs().count("taken over by another process") == 1
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="connected again")
    changed = MOTD.replace('"managed\\n"', '"managed again\\n"')
    assert server.push(write(tmp_path / "motd.yaml", changed)).returncode == 0
    wait_for(lambda: motd.read_text() == "managed again\n", what="the next push applied")
