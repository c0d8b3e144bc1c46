"""Enrollment tokens over real TLS: bound to names, capped, listed, revoked, re-enrolling.

Every test runs the real server, ``plumb`` and ``plumb-agent`` processes on
loopback (tests/integration/harness.py); raw gRPC calls stand in for an
attacker's client where the agent would refuse to send what is being tested.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------ helpers


def _csr(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    # The CN is the agent's business; the server signs for the requested name.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csr")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def raw_enroll(server: Server, token: str, name: str, csr: bytes | None = None) -> Any:
    """One Enroll call as any client could make it: the reply, or the grpc.Call refusing it."""
    ca = (server.data_dir / "pki" / "ca.crt").read_bytes()
    with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca)) as channel:
        request = pb.EnrollRequest(
            token=token, node_name=name, csr_pem=_csr(name) if csr is None else csr
        )
        try:
            return pb_grpc.EnrollmentStub(channel).Enroll(request, timeout=30)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc


def refused(result: Any, code: grpc.StatusCode, details: str) -> None:
    assert isinstance(result, grpc.Call), f"not refused: {result}"
    assert (result.code(), details in result.details()) == (code, True), result.details()


def stored_node(server: Server, name: str) -> tuple[str, str | None]:
    """(cert_serial, enrolled_by_token) of ``name`` as the store holds them."""
    db = sqlite3.connect(f"file:{server.data_dir / 'plumb.db'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT cert_serial, enrolled_by_token FROM nodes WHERE name = ?", (name,)
        ).fetchone()
    finally:
        db.close()
    assert row is not None, f"no node {name!r} in the store"
    return row[0], row[1]


def cert_serial(agent: Agent) -> str:
    cert = x509.load_pem_x509_certificate((agent.state_dir / "node.crt").read_bytes())
    return format(cert.serial_number, "x")


def create(server: Server, *args: str) -> dict[str, Any]:
    reply: dict[str, Any] = server.cli_json("token", "create", *args)
    return reply


def listed(server: Server, *args: str) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in server.cli_json("token", "list", *args)["tokens"]}


def secret_of(token: str) -> str:
    return token.split(".")[2]


# ------------------------------------------------------------ names a token allows


def test_a_token_bound_to_names_enrolls_only_those_names(
    server: Server, make_agent: Callable[[str], Agent]
) -> None:
    token = create(server, "--names", "db-2,db-3", "--uses", "5", "--labels", "role=db")
    assert (token["names"], token["name_pattern"]) == (["db-2", "db-3"], None)

    intruder = make_agent("kiosk-1")
    result = intruder.enroll(server, token["token"])
    assert result.returncode == 1
    assert (
        f"enrollment refused: token {token['id']} allows only the name(s) db-2, db-3, "
        "not 'kiosk-1'" in result.stderr
    )
    assert not (intruder.state_dir / "node.key").exists()

    ok = make_agent("db-3").enroll(server, token["token"])
    assert ok.returncode == 0, ok.stderr
    assert server.nodes()["db-3"]["labels"] == {"role": "db"}
    # The refusal spent nothing.
    assert listed(server)[token["id"]]["used"] == 1


def test_a_token_bound_to_a_pattern_enrolls_only_matching_names(
    server: Server, make_agent: Callable[[str], Agent]
) -> None:
    token = create(server, "--name-pattern", "web-*", "--uses", "5")
    assert make_agent("web-12.example.com").enroll(server, token["token"]).returncode == 0
    result = make_agent("db-1").enroll(server, token["token"])
    assert result.returncode == 1
    assert "allows only names matching 'web-*', not 'db-1'" in result.stderr
    assert sorted(server.nodes()) == ["web-12.example.com"]


SECRET_DB = """\
name: db
target: {names: [db-2]}
resources:
  - kind: file
    name: password
    spec: {path: /etc/db.secret, content: "s3cret\\n", mode: "0600"}
"""


def test_a_name_a_manifest_targets_is_not_for_an_unbound_token(
    server: Server, make_agent: Callable[[str], Agent], tmp_path: Path
) -> None:
    """The review's case: a role=kiosk token enrolled as db-2 and got db-2's secrets."""
    pushed = server.push(write(tmp_path / "db.yaml", SECRET_DB))
    assert pushed.returncode == 0, pushed.stderr  # db-2 is not enrolled yet
    kiosk_token = server.token({"role": "kiosk"}, uses=50)

    impostor = Agent("db-2", tmp_path / "kiosk-host")
    result = impostor.enroll(server, kiosk_token)
    assert result.returncode == 1
    assert (
        "the name 'db-2' is targeted by name by manifest(s) db, so only a token bound to "
        "it may enroll it" in result.stderr
    )
    assert "plumb token create --names db-2" in result.stderr
    assert not (impostor.state_dir / "node.key").exists()
    assert "db-2" not in server.nodes()
    # The kiosk token still enrolls kiosks: only the reserved name was refused.
    assert make_agent("kiosk-1").enroll(server, kiosk_token).returncode == 0

    real = make_agent("db-2")
    real.path("/etc").mkdir()
    ok = real.enroll(server, server.token({"role": "db"}, names=["db-2"]))
    assert ok.returncode == 0, ok.stderr
    run = real.run_once()
    assert run.returncode == 0, run.stdout + run.stderr
    assert real.path("/etc/db.secret").read_text() == "s3cret\n"
    assert not impostor.path("/etc/db.secret").exists()


# ------------------------------------------------------------ an enrolled name, re-enrolled


def test_an_enrolled_name_is_taken_only_with_a_reenroll_token(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    db2 = enrolled("db-2", role="db")
    first_serial, first_token = stored_node(server, "db-2")
    assert first_serial == cert_serial(db2)
    first_key = (db2.state_dir / "node.key").read_bytes()

    # Neither an unbound token nor one bound to the name takes it over.
    new_host = Agent("db-2", tmp_path / "new-host")
    for token in (server.token(), server.token(names=["db-2"])):
        result = new_host.enroll(server, token)
        assert result.returncode == 1
        assert "a node named 'db-2' is already enrolled" in result.stderr
        assert "plumb node reenroll db-2" in result.stderr
    assert stored_node(server, "db-2") == (first_serial, first_token)

    reenroll = server.cli_json("node", "reenroll", "db-2")
    assert (reenroll["names"], reenroll["uses"], reenroll["reenroll"]) == (["db-2"], 1, True)
    assert "--replace" in reenroll["enroll_command"]
    # It is bound to db-2: no other name enrolls with it.
    other = raw_enroll(server, reenroll["token"], "db-3")
    refused(other, grpc.StatusCode.PERMISSION_DENIED, "allows only the name(s) db-2")

    # Without --replace the enrolled node stays as it is, and spends nothing.
    same = db2.enroll(server, reenroll["token"])
    assert "already enrolled as db-2" in same.stdout
    replaced = db2.enroll(server, reenroll["token"], "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "enrolled as db-2" in replaced.stdout
    assert (db2.state_dir / "node.key").read_bytes() != first_key
    serial, by_token = stored_node(server, "db-2")
    assert serial == cert_serial(db2) != first_serial
    assert by_token == reenroll["id"] != first_token
    node = server.nodes()["db-2"]
    assert (node["labels"], node["enrolled_by_token"]) == ({"role": "db"}, reenroll["id"])

    # Single use: spent.
    again = new_host.enroll(server, reenroll["token"])
    assert again.returncode == 1
    assert "has been used up" in again.stderr

    # A new host under the old name: a fresh state dir, no --replace needed.
    fresh = server.cli_json("node", "reenroll", "db-2")
    ok = new_host.enroll(server, fresh["token"])
    assert ok.returncode == 0, ok.stderr
    assert stored_node(server, "db-2") == (cert_serial(new_host), fresh["id"])
    assert list(server.nodes()) == ["db-2"]


def test_reenroll_needs_an_enrolled_node(server: Server) -> None:
    result = server.cli("node", "reenroll", "ghost", check=False)
    assert result.returncode == 1
    assert "no node named 'ghost' is enrolled" in result.stderr
    assert listed(server, "--all") == {}


# ------------------------------------------------------------ list, revoke, who enrolled whom


def test_tokens_are_listed_without_secrets_and_a_revoked_one_enrolls_nothing(
    server: Server, make_agent: Callable[[str], Agent]
) -> None:
    token = create(server, "--labels", "role=web", "--uses", "3")
    assert make_agent("web-1").enroll(server, token["token"]).returncode == 0

    shown = listed(server)[token["id"]]
    assert {k: shown[k] for k in ("labels", "uses", "used", "uses_left", "state", "nodes")} == {
        "labels": {"role": "web"},
        "uses": 3,
        "used": 1,
        "uses_left": 2,
        "state": "valid",
        "nodes": ["web-1"],
    }
    assert (shown["names"], shown["name_pattern"], shown["revoked_at"]) == (None, None, None)
    assert shown["expires_at"] == token["expires_at"]
    for args in ((), ("--json",), ("--all",), ("--all", "--json")):
        out = server.cli("token", "list", *args)
        assert token["id"] in out.stdout
        assert secret_of(token["token"]) not in out.stdout + out.stderr
    assert server.nodes()["web-1"]["enrolled_by_token"] == token["id"]

    revoked = server.cli_json("token", "revoke", token["id"])
    assert revoked["already_revoked"] is False
    assert revoked["token"]["state"] == "revoked"
    late = make_agent("web-2").enroll(server, token["token"])
    assert late.returncode == 1
    assert f"token {token['id']} has been revoked" in late.stderr
    assert sorted(server.nodes()) == ["web-1"]  # nodes it enrolled stay enrolled

    assert token["id"] not in listed(server)
    everything = listed(server, "--all")[token["id"]]
    assert everything["state"] == "revoked"
    assert everything["revoked_at"] == revoked["token"]["revoked_at"]
    twice = server.cli_json("token", "revoke", token["id"])
    assert twice["already_revoked"] is True
    assert twice["token"]["revoked_at"] == everything["revoked_at"]


@pytest.mark.parametrize(
    ("token_id", "message"),
    [
        ("00000000", "no token has the id 00000000"),
        ("zz", "'zz' is not a token id"),
    ],
)
def test_revoking_a_token_that_is_not_there_says_so(
    server: Server, token_id: str, message: str
) -> None:
    result = server.cli("token", "revoke", token_id, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------ caps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--ttl", str(7 * 86400 + 1)],
            "a token lives at most 604800 s (7 days; the server's token_max_ttl_s), not 604801 s",
        ),
        (["--ttl", str(136 * 365 * 86400)], "a token lives at most 604800 s"),
        (["--uses", "1001"], "a token enrolls at most 1000 nodes (the server's token_max_uses)"),
    ],
)
def test_tokens_over_the_default_caps_are_refused(
    server: Server, args: list[str], message: str
) -> None:
    result = server.cli("token", "create", *args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert listed(server, "--all") == {}


def test_tokens_at_the_default_caps_are_made(server: Server) -> None:
    token = create(server, "--ttl", str(7 * 86400), "--uses", "1000")
    assert token["uses"] == 1000
    assert listed(server)[token["id"]]["uses_left"] == 1000


def test_the_caps_are_server_settings(tmp_path: Path) -> None:
    server = Server(tmp_path / "server")
    config = server.data_dir / "server.toml"
    text = config.read_text()
    # init writes every setting with its default: the operator sees them there.
    assert "token_max_ttl_s = 604800\n" in text and "token_max_uses = 1000\n" in text
    text = text.replace("token_max_ttl_s = 604800", "token_max_ttl_s = 120")
    config.write_text(text.replace("token_max_uses = 1000", "token_max_uses = 3"))
    server.start()
    try:
        over = server.cli("token", "create", "--ttl", "121", check=False)
        assert "a token lives at most 120 s (2 minutes;" in over.stderr
        many = server.cli("token", "create", "--uses", "4", check=False)
        assert "a token enrolls at most 3 nodes" in many.stderr
        reenroll = server.cli("node", "reenroll", "web-1", "--ttl", "121", check=False)
        assert "a token lives at most 120 s" in reenroll.stderr
        assert create(server, "--ttl", "120", "--uses", "3")["uses"] == 3
        # Without --ttl: the default hour, cut to the cap.
        default = create(server)
        assert default["expires_at"] - listed(server)[default["id"]]["created_at"] == 120
    finally:
        server.stop()


# ------------------------------------------------------------ the token before the CSR


def test_the_token_is_checked_before_the_csr_is_parsed(server: Server) -> None:
    real = create(server, "--uses", "2")
    prefix, _, secret, fingerprint = real["token"].split(".")
    unknown = f"{prefix}.00000000.{secret}.{fingerprint}"
    garbage = b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64 at all\n"

    refused(
        raw_enroll(server, unknown, "web-1", garbage),
        grpc.StatusCode.PERMISSION_DENIED,
        "enrollment refused: unknown token",
    )
    bound = create(server, "--names", "db-1")
    refused(
        raw_enroll(server, bound["token"], "web-1", garbage),
        grpc.StatusCode.PERMISSION_DENIED,
        "allows only the name(s) db-1",
    )
    server.cli("token", "revoke", real["id"])
    refused(
        raw_enroll(server, real["token"], "web-1", garbage),
        grpc.StatusCode.PERMISSION_DENIED,
        f"token {real['id']} has been revoked",
    )
    # A good token and a bad CSR: the CSR's error, and the use is not spent.
    good = create(server)
    refused(
        raw_enroll(server, good["token"], "web-1", garbage),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the certificate request is not valid PEM",
    )
    assert listed(server)[good["id"]]["uses_left"] == 1
    assert server.nodes() == {}


def test_concurrent_enrollments_spend_each_use_once(server: Server) -> None:
    token = create(server, "--uses", "3")
    names = [f"node-{i}" for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda name: raw_enroll(server, token["token"], name), names))
    enrolled = [r.node_name for r in results if isinstance(r, pb.EnrollResponse)]
    assert len(enrolled) == 3
    for r in results:
        if not isinstance(r, pb.EnrollResponse):
            refused(r, grpc.StatusCode.PERMISSION_DENIED, "has been used up (it allowed 3 use(s))")
    assert sorted(server.nodes()) == sorted(enrolled)
    assert listed(server, "--all")[token["id"]]["state"] == "used_up"


# ------------------------------------------------------------ node names


BAD_NAMES = [
    "node-a\n",
    "a" * 32 + "." + "a" * 31 + "\n",  # 64 characters and a newline: 65
    "a" * 32 + "." + "a" * 32,  # 65
    ".".join(["a" * 63] * 4)[:253],  # 253
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=["newline", "64+newline", "65", "253"])
def test_the_server_refuses_names_that_are_no_host_name_of_64_characters(
    server: Server, enrolled: Callable[..., Agent], name: str
) -> None:
    enrolled("node-a")
    result = raw_enroll(server, server.token(), name)
    refused(result, grpc.StatusCode.INVALID_ARGUMENT, f"invalid node name {name!r}")
    assert list(server.nodes()) == ["node-a"]  # no second "node-a"


@pytest.mark.parametrize("name", BAD_NAMES, ids=["newline", "64+newline", "65", "253"])
def test_the_agent_refuses_those_names_before_it_contacts_anyone(
    make_agent: Callable[[str], Agent], name: str
) -> None:
    agent = make_agent("x")
    token = "plumb1.0123abcd." + "s" * 32 + "." + "f" * 64
    # Port 1 of loopback: nobody listens; a name that got past the agent's check
    # would fail there, with another message.
    result = subprocess.run(
        agent._cmd("enroll", "--server", "127.0.0.1:1", "--token", "-", f"--name={name}"),
        input=token,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"invalid node name {name!r}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not agent.state_dir.exists()


# ------------------------------------------------------------ the token off the command line


def test_a_token_file_must_be_private(server: Server, make_agent: Callable[[str], Agent]) -> None:
    token = create(server)
    agent = make_agent("web-1")
    path = agent.state_dir.parent / "plumb.token"
    path.write_text(f"{token['token']}\n")
    path.chmod(0o644)
    enroll = ["enroll", "--server", server.enroll_address, "--name", "web-1"]

    shared = subprocess.run(
        agent._cmd(*enroll, "--token-file", str(path)), capture_output=True, text=True, timeout=60
    )
    assert shared.returncode == 1
    assert f"the token file {path} can be read by other users (mode 0644)" in shared.stderr
    assert f"chmod 600 {path}" in shared.stderr
    assert not agent.state_dir.exists()

    path.chmod(0o600)
    private = subprocess.run(
        agent._cmd(*enroll, "--token-file", str(path)), capture_output=True, text=True, timeout=60
    )
    assert private.returncode == 0, private.stderr
    assert "warning" not in private.stderr
    assert listed(server, "--all")[token["id"]]["nodes"] == ["web-1"]


def test_a_token_on_the_command_line_still_works_with_a_warning(
    server: Server, make_agent: Callable[[str], Agent]
) -> None:
    agent = make_agent("web-1")
    result = subprocess.run(
        agent._cmd(
            "enroll", "--server", server.enroll_address, "--token", server.token(), "--name=web-1"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "warning: a token given as --token TOKEN can be read by every user" in result.stderr
    assert "--token-file PATH or --token - (stdin)" in result.stderr


class ProcWatch:
    """Reads every process's /proc/PID/cmdline over and over, as any user of the host can."""

    def __init__(self, secret: str, marker: str) -> None:
        self.secret = secret
        self.marker = marker
        self.leaks: list[str] = []
        self.seen: list[str] = []  # command lines with ``marker``: proof it looked in time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # A sweep every few milliseconds: enroll runs for a good second (an
        # interpreter starting, a key made, two TLS handshakes).
        while not self._stop.wait(0.003):
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:  # gone meanwhile
                    continue
                line = raw.replace(b"\0", b" ").decode(errors="replace")
                if self.secret in line:
                    self.leaks.append(line)
                if self.marker in line and "enroll" in line:
                    self.seen.append(line)


@pytest.fixture
def node_commands(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Stand-ins for a fresh node's apt-get, systemctl and installed plumb-agent.

    The line under test is pasted into a real shell, as an operator pastes it;
    only what the package would have installed is stood in for: a plumb-agent
    command running this checkout's agent in a state dir of the test's own,
    and an apt-get and a systemctl that record their arguments.
    """
    bin_dir, state = tmp_path / "node-bin", tmp_path / "node-state"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("apt-get", "systemctl"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
    (bin_dir / "plumb-agent").write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={REPO} exec {sys.executable} -m agent.main --config /dev/null "
        f'--state-dir {state} "$@" --name kiosk-1\n'
    )
    for script in bin_dir.iterdir():
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    yield bin_dir, state


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_the_install_command_keeps_the_token_out_of_every_command_line(
    server: Server, node_commands: tuple[Path, Path], tmp_path: Path, shell: str
) -> None:
    reply = create(server, "--labels", "role=kiosk", "--install-command")
    line = reply["install_command"]
    bin_dir, state = node_commands
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    with ProcWatch(secret_of(reply["token"]), str(state)) as watch:
        # Pasted into a root shell: the line reaches the shell on its input.
        pasted = subprocess.run(
            [shell], input=f"{line}\n", capture_output=True, text=True, env=env, timeout=60
        )
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert watch.seen, "the watch never saw plumb-agent enroll running"
    assert watch.leaks == []
    assert "warning" not in pasted.stderr
    assert server.nodes()["kiosk-1"]["enrolled_by_token"] == reply["id"]
    assert (tmp_path / "calls").read_text() == (
        "apt-get install -y plumb-agent\nsystemctl start plumb-agent\n"
    )
