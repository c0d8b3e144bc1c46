"""Operators with roles, and the audit log, on a real server over mutual TLS on loopback.

Answers the security review's finding (issue 11): "one shared operator key,
next to ca.key, no roles, no record of who pushed, created a token or
enrolled a node". Operators are made as an admin makes them
(``plumb-server operator add`` on the server host, ``plumb operator add``
from anywhere) and act through the real ``plumb`` CLI, or through the Admin
service directly with their own certificates for the methods the CLI does
not name one by one. The store file is tampered with as an attacker would:
sqlite3 on the file, behind the server's back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, command, wait_for

TIMEOUT = 10
LOOPBACK_PEER = re.compile(r"127\.0\.0\.1:\d+")
ADMIN_METHODS = pb.DESCRIPTOR.services_by_name["Admin"].methods
ROLES = ["viewer", "operator", "admin"]  # each may do what the ones before it may
#: What the README promises: the role each Admin method needs (stated here, not read
#: from server/auth.py, whose table tests/server/test_auth.py checks against this too).
NEEDS = {
    **dict.fromkeys(
        [
            "ListNodes",
            "GetReport",
            "ListDrift",
            "GetCompliance",
            "ListTokens",
            "ListOperators",
            "ListAudit",
            "VerifyAudit",
            "RenewOperator",
            "ListManifests",
            "ListRevisions",
            "DiffRevisions",
            "GetRollout",
            "ListRuns",
            "ListWaivers",
        ],
        "viewer",
    ),
    **dict.fromkeys(
        ["Push", "Plan", "RemoveManifest", "Rollback", "SetLabels", "SteerRollout"], "operator"
    ),
    **dict.fromkeys(
        [
            "CreateToken",
            "RevokeToken",
            "ReenrollNode",
            "RevokeNode",
            "RemoveNode",
            "AddOperator",
            "RevokeOperator",
            "AddWaiver",
            "RevokeWaiver",
        ],
        "admin",
    ),
}


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /etc/motd, content: "managed\\n"}}
"""


def plumb_server(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("server.main"), "--data-dir", str(server.data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def add_operator(server: Server, name: str, role: str, out: Path) -> Path:
    """``plumb-server operator add`` on the server host; the operator's cli.toml."""
    done = plumb_server(server, "operator", "add", name, "--role", role, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out / "cli.toml"


def plumb(server: Server, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``plumb`` as the operator whose config is ``config``."""
    env = {"PLUMB_CONFIG": str(config), "PLUMB_SERVER": server.agent_address}
    result = subprocess.run(
        command("server.cli") + list(args),
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    return result


def stub(server: Server, config: Path) -> pb_grpc.AdminStub:
    """The Admin service as the operator of ``config`` (its own key and certificate)."""
    here = config.parent
    credentials = grpc.ssl_channel_credentials(
        (here / "ca.crt").read_bytes(),
        (here / "operator.key").read_bytes(),
        (here / "operator.crt").read_bytes(),
    )
    return pb_grpc.AdminStub(grpc.secure_channel(server.agent_address, credentials))


def audit_entries(server: Server) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = server.cli_json("audit", "--limit", "1000")["entries"]
    return entries


def sql(server: Server, statement: str, *params: object) -> list[Any]:
    conn = sqlite3.connect(server.data_dir / "plumb.db")
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


# ------------------------------------------------------------ roles, every method


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Path]]]:
    """One server and an operator of each role (made on the server host)."""
    base = tmp_path_factory.mktemp("roles")
    server = Server(base / "server")
    server.start()
    try:
        configs = {role: add_operator(server, f"{role}-1", role, base / role) for role in ROLES}
        yield server, configs
    finally:
        server.stop()


def call(admin: pb_grpc.AdminStub, method: str) -> tuple[grpc.StatusCode, str]:
    """Call ``method`` with an empty request: its status and details."""
    descriptor = pb.DESCRIPTOR.services_by_name["Admin"].methods_by_name[method]
    request = getattr(pb, descriptor.input_type.name)()
    try:
        getattr(admin, method)(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code(), str(exc.details())
    return grpc.StatusCode.OK, ""


def test_every_admin_method_is_in_the_table_of_this_test() -> None:
    assert sorted(NEEDS) == sorted(m.name for m in ADMIN_METHODS)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_against_every_admin_method(
    fleet: tuple[Server, dict[str, Path]], role: str
) -> None:
    server, configs = fleet
    admin = stub(server, configs[role])
    name = f"{role}-1"
    for method in ADMIN_METHODS:
        needed = NEEDS[method.name]
        code, details = call(admin, method.name)
        if allows(role, needed):
            # Let in: whatever the empty request gets (NOT_FOUND, INVALID_ARGUMENT, OK),
            # never a refusal of the caller.
            assert not details.startswith(f"operator '{name}'"), (method.name, details)
            assert code != grpc.StatusCode.PERMISSION_DENIED, (method.name, details)
        else:
            assert (code, details) == (
                grpc.StatusCode.PERMISSION_DENIED,
                f"operator '{name}' ({role}) may not {method.name}: needs the {needed} role",
            ), method.name


def test_roles_through_the_cli(fleet: tuple[Server, dict[str, Path]], tmp_path: Path) -> None:
    server, configs = fleet
    motd = write(tmp_path / "motd.yaml", MOTD)
    viewer, operator, admin = (configs[r] for r in ROLES)

    refused = plumb(server, viewer, "push", str(motd))
    assert refused.returncode == 1
    assert refused.stderr == (
        "plumb: the server refused or failed: operator 'viewer-1' (viewer) may not Push: "
        "needs the operator role (PERMISSION_DENIED)\n"
    )
    assert plumb(server, viewer, "nodes").returncode == 0
    assert plumb(server, viewer, "audit").returncode == 0

    assert plumb(server, operator, "push", str(motd)).returncode == 0
    for argv, method in (
        (["token", "create", "--names", "db-2"], "CreateToken"),
        (["node", "revoke", "web-1"], "RevokeNode"),
        (["operator", "revoke", "viewer-1"], "RevokeOperator"),
    ):
        result = plumb(server, operator, *argv)
        assert result.returncode == 1
        assert (
            f"operator 'operator-1' (operator) may not {method}: needs the admin role "
            "(PERMISSION_DENIED)" in result.stderr
        )

    token = plumb(server, admin, "token", "create", "--names", "db-2", "--json")
    assert token.returncode == 0, token.stderr
    assert json.loads(token.stdout)["names"] == ["db-2"]


# ------------------------------------------------------------ revocation


def test_a_revoked_operator_is_refused_on_its_next_call(server: Server, tmp_path: Path) -> None:
    added = server.cli("operator", "add", "bob", "--role", "operator", "--out", str(tmp_path / "b"))
    bob = tmp_path / "b" / "cli.toml"
    assert "operator 'bob' (operator) added" in added.stdout
    assert plumb(server, bob, "nodes").returncode == 0  # known, cached by the server now

    revoked = server.cli_json("operator", "revoke", "bob")
    assert (revoked["operator"]["state"], revoked["already_revoked"]) == ("revoked", False)
    result = plumb(server, bob, "nodes")  # at once: no waiting
    assert result.returncode == 1
    assert re.fullmatch(
        r"plumb: the server refused or failed: operator bob was revoked at .* UTC: an admin "
        r"can add it again, with a new certificate \(UNAUTHENTICATED\)\n",
        result.stderr,
    )

    # Added again (through the server: seen at once): a new certificate, and
    # the old one stays refused.
    server.cli("operator", "add", "bob", "--role", "viewer", "--out", str(tmp_path / "b2"))
    assert plumb(server, tmp_path / "b2" / "cli.toml", "nodes").returncode == 0
    old = plumb(server, bob, "nodes")
    assert "is not operator bob's current one (revoked, replaced or renewed)" in old.stderr


def test_revoked_on_the_server_host_it_is_refused_within_a_second(
    server: Server, tmp_path: Path
) -> None:
    carol = add_operator(server, "carol", "operator", tmp_path / "carol")
    assert plumb(server, carol, "nodes").returncode == 0
    done = plumb_server(server, "operator", "revoke", "carol")
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    wait_for(
        lambda: plumb(server, carol, "nodes").returncode == 1, timeout=10, what="carol refused"
    )
    assert time.monotonic() - revoked_at < 3.0  # a second of cache, and a process start
    listed = json.loads(plumb_server(server, "operator", "list", "--all", "--json").stdout)
    assert {o["name"]: o["state"] for o in listed["operators"]} == {
        "admin": "current",
        "carol": "revoked",
    }


def test_the_admin_service_keeps_an_admin(server: Server) -> None:
    result = server.cli("operator", "revoke", "admin", check=False)
    assert result.returncode == 1
    assert "admin is the last admin: add another admin first" in result.stderr
    assert server.cli("nodes").returncode == 0


# ------------------------------------------------------------ keys stay with operators


def private_value(pem: bytes) -> int | None:
    """The private scalar of an EC key in PEM; None for anything else."""
    try:
        key = serialization.load_pem_private_key(pem, None)
    except (ValueError, TypeError):
        return None
    return (
        key.private_numbers().private_value if isinstance(key, ec.EllipticCurvePrivateKey) else None
    )


def files_holding(directory: Path, key: bytes) -> list[Path]:
    """Files under ``directory`` that hold ``key``: its PEM as is, or the same key re-encoded."""
    value = private_value(key)
    return [
        p
        for p in directory.rglob("*")
        if p.is_file() and (key in p.read_bytes() or private_value(p.read_bytes()) == value)
    ]


def test_an_operator_s_key_is_never_in_the_data_dir(server: Server, tmp_path: Path) -> None:
    inside = plumb_server(
        server, "operator", "add", "eve", "--role", "admin", "--out", str(server.data_dir / "eve")
    )
    assert inside.returncode == 1
    assert "inside the server's data dir" in inside.stderr
    assert not (server.data_dir / "eve").exists()

    # The check finds a key where there is one: init's admin's, under <data>/operator.
    admins = server.data_dir / "operator" / "operator.key"
    assert files_holding(server.data_dir, admins.read_bytes()) == [admins]

    for how, out in (("plumb-server", tmp_path / "dora"), ("plumb", tmp_path / "fred")):
        if how == "plumb-server":
            config = add_operator(server, "dora", "operator", out)
        else:
            server.cli("operator", "add", "fred", "--role", "viewer", "--out", str(out))
            config = out / "cli.toml"
        key = (out / "operator.key").read_bytes()
        assert private_value(key) is not None
        assert files_holding(server.data_dir, key) == [], how
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o600}
        # Portable: the directory works wherever it is moved.
        moved = tmp_path / "elsewhere" / how
        moved.parent.mkdir(exist_ok=True)
        shutil.move(str(out), moved)
        assert plumb(server, moved / config.name, "nodes").returncode == 0, how


# ------------------------------------------------------------ the audit log


def test_the_audit_log_records_who_did_what_from_where(
    server: Server, make_agent: Callable[[str], Agent], tmp_path: Path
) -> None:
    carol = add_operator(server, "carol", "operator", tmp_path / "carol")
    viewer = add_operator(server, "vic", "viewer", tmp_path / "vic")

    token = server.cli_json("token", "create", "--names", "web-1", "--labels", "role=web")
    agent = make_agent("web-1")
    assert agent.enroll(server, token["token"]).returncode == 0
    motd = write(tmp_path / "motd.yaml", MOTD)
    pushed = json.loads(plumb(server, carol, "push", str(motd), "--json").stdout)
    assert plumb(server, viewer, "push", str(motd)).returncode == 1
    reenroll = server.cli_json("node", "reenroll", "web-1")
    old_serial = server.nodes()["web-1"]["cert_serial"]
    assert agent.enroll(server, reenroll["token"], "--replace").returncode == 0
    new_serial = server.nodes()["web-1"]["cert_serial"]

    entries = audit_entries(server)
    by_action: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_action.setdefault(e["action"], []).append(e)
    # Who: the admin of init and the operators added on the host, each as itself.
    added = [(e["actor_kind"], e["details"]["operator"]) for e in by_action["AddOperator"]]
    assert added == [("local", "admin"), ("local", "carol"), ("local", "vic")]
    assert {e["peer"] for e in by_action["AddOperator"]} == {"local"}

    (created,) = by_action["CreateToken"]
    assert (created["actor_kind"], created["actor"], created["role"]) == (
        "operator",
        "admin",
        "admin",
    )
    assert LOOPBACK_PEER.fullmatch(created["peer"]), created["peer"]
    assert created["details"]["token"] == token["id"]
    assert created["details"]["names"] == ["web-1"]
    assert created["result"] == "ok"

    enrolled, replaced = by_action["Enroll"]
    assert (enrolled["actor_kind"], enrolled["actor"]) == ("token", token["id"])
    assert LOOPBACK_PEER.fullmatch(enrolled["peer"]), enrolled["peer"]
    assert enrolled["details"]["node"] == "web-1"
    assert enrolled["details"]["reenroll"] is False
    assert (replaced["actor"], replaced["details"]["reenroll"]) == (reenroll["id"], True)
    assert replaced["details"]["replaced_serial"] == old_serial
    assert replaced["details"]["cert_serial"] == new_serial
    cert = x509.load_pem_x509_certificate((agent.state_dir / "node.crt").read_bytes())
    assert format(cert.serial_number, "x") == new_serial

    ok_push, refused_push = by_action["Push"]
    assert (ok_push["actor"], ok_push["role"], ok_push["result"]) == ("carol", "operator", "ok")
    assert ok_push["revision"] == pushed["revision"] == ok_push["details"]["revision"]
    assert ok_push["details"]["files"][0]["path"] == str(motd)
    # The revision names its push's entry back.
    assert sql(server, "SELECT audit_id FROM revisions WHERE id = ?", pushed["revision"]) == [
        (ok_push["id"],)
    ]
    assert (refused_push["actor"], refused_push["result"]) == ("vic", "refused")
    assert refused_push["reason"] == (
        "PERMISSION_DENIED: operator 'vic' (viewer) may not Push: needs the operator role"
    )
    assert (by_action["ReenrollNode"][0]["details"]["node"], len(by_action)) == ("web-1", 5)

    # No secret anywhere in the log: not the tokens, not the manifest's content.
    raw = json.dumps(sql(server, "SELECT * FROM audit_log"))
    for secret in (token["token"].split(".")[2], reenroll["token"].split(".")[2], "managed"):
        assert secret not in raw
    # Successful reads are not recorded: nodes, audit and report were all called above.
    assert not {"ListNodes", "ListAudit", "GetReport"} & set(by_action)
    assert server.cli("audit", "--verify").returncode == 0


def test_a_refused_enrollment_of_a_genuine_token_is_recorded(
    server: Server, make_agent: Callable[[str], Agent]
) -> None:
    token = server.cli_json("token", "create", "--names", "db-3")
    assert make_agent("db-2").enroll(server, token["token"]).returncode != 0
    forged = token["token"].split(".")
    forged[2] = "x" * 32  # a wrong secret: anyone can send that, so it is not recorded
    assert make_agent("db-4").enroll(server, ".".join(forged)).returncode != 0
    enrollments = [e for e in audit_entries(server) if e["action"] == "Enroll"]
    assert [(e["details"]["node"], e["result"]) for e in enrollments] == [("db-2", "refused")]
    assert (
        enrollments[0]["reason"] == f"token {token['id']} allows only the name(s) db-3, not 'db-2'"
    )


def test_verify_finds_an_edited_and_a_deleted_entry(server: Server, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        add_operator(server, f"op-{name}", "viewer", tmp_path / name)
    intact = server.cli("audit", "--verify")
    assert intact.stdout.startswith("audit log intact: 4 entries; head: entry 4, sha256 ")

    # Who added op-b, edited in the store file: found at that entry.
    (actor,) = sql(server, "SELECT actor FROM audit_log WHERE id = 3")[0]
    sql(server, "UPDATE audit_log SET actor = 'nobody' WHERE id = 3")
    edited = server.cli("audit", "--verify", check=False)
    assert edited.returncode == 1
    assert edited.stdout == (
        "audit log BROKEN at entry 3: entry 3 was changed after it was written: its hash "
        "does not match it (3 entries read)\n"
    )
    sql(server, "UPDATE audit_log SET actor = ? WHERE id = 3", actor)
    assert server.cli("audit", "--verify").returncode == 0

    sql(server, "DELETE FROM audit_log WHERE id = 2")
    deleted = server.cli("audit", "--verify", "--json", check=False)
    assert deleted.returncode == 1
    assert json.loads(deleted.stdout) == {
        "intact": False,
        "entries": 2,
        "head": {"id": 1, "hash": json.loads(deleted.stdout)["head"]["hash"]},
        "broken_at": 2,
        "problem": "entry 2 is missing before entry 3 (deleted?)",
    }
