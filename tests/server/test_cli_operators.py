"""`plumb operator` and `plumb audit` against a fake Admin stub: what is sent, shown, written."""

from __future__ import annotations

import datetime
import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protos import plumb_pb2 as pb
from server import cli
from server.pki import KeyPair, cert_pem, create_ca, sign_operator_csr

ALICE = pb.OperatorInfo(name="alice", role="viewer", cert_serial="5f3a", created_at=10.0)
GONE = pb.OperatorInfo(
    name="bob", role="admin", cert_serial="0b0b", created_at=20.0, revoked_at=30.0
)
DETAILS = {
    "files": [{"path": "web.yaml", "bytes": 120, "sha256": "ab" * 32}],
    "revision": 5,
    "targeted": 2,
    "unchanged": False,
}
PUSH = pb.AuditEntry(
    id=7,
    at=40.0,
    actor_kind="operator",
    actor="alice",
    role="operator",
    peer="10.0.0.5:53211",
    action="Push",
    details_json=json.dumps(DETAILS),
    result="ok",
    revision=5,
    prev_hash="1" * 64,
    hash="2" * 64,
)
ENROLL = pb.AuditEntry(
    id=8,
    at=41.0,
    actor_kind="token",
    actor="0a1b2c3d",
    peer="10.0.0.9:40000",
    action="Enroll",
    details_json='{"node":"db-2"}',
    result="refused",
    reason="token 0a1b2c3d allows only db-3, not 'db-2'",
    prev_hash="2" * 64,
    hash="3" * 64,
)


class OperatorsAdmin:
    def __init__(self, ca: KeyPair) -> None:
        self.ca = ca
        self.requests: list[Any] = []
        self.intact = True

    def AddOperator(self, request: pb.AddOperatorRequest, timeout: float) -> pb.AddOperatorResponse:
        self.requests.append(request)
        cert = sign_operator_csr(self.ca, request.csr_pem, request.name)
        info = pb.OperatorInfo(
            name=request.name,
            role=request.role,
            cert_serial=format(cert.serial_number, "x"),
            created_at=10.0,
        )
        return pb.AddOperatorResponse(
            operator=info, certificate_pem=cert_pem(cert), ca_pem=cert_pem(self.ca.cert)
        )

    def ListOperators(
        self, request: pb.ListOperatorsRequest, timeout: float
    ) -> pb.ListOperatorsResponse:
        self.requests.append(request)
        return pb.ListOperatorsResponse(operators=[ALICE, GONE] if request.all else [ALICE])

    def RevokeOperator(
        self, request: pb.RevokeOperatorRequest, timeout: float
    ) -> pb.RevokeOperatorResponse:
        self.requests.append(request)
        return pb.RevokeOperatorResponse(operator=GONE, already_revoked=True)

    def ListAudit(self, request: pb.ListAuditRequest, timeout: float) -> pb.ListAuditResponse:
        self.requests.append(request)
        return pb.ListAuditResponse(entries=[PUSH, ENROLL], more=True)

    def VerifyAudit(self, request: pb.VerifyAuditRequest, timeout: float) -> pb.VerifyAuditResponse:
        if self.intact:
            return pb.VerifyAuditResponse(intact=True, entries=8, head_id=8, head_hash="3" * 64)
        return pb.VerifyAuditResponse(
            entries=4,
            head_id=3,
            head_hash="4" * 64,
            broken_at=4,
            problem="entry 4 was changed after it was written: its hash does not match it",
        )


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> OperatorsAdmin:
    fake = OperatorsAdmin(create_ca())
    monkeypatch.setattr(cli, "_stub", lambda args: fake)
    return fake


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "admin" / "cli.toml"
    path.parent.mkdir()
    path.write_text('server = "plumb.example.com:8443"\nca = "ca.crt"\ncert = "c"\nkey = "k"\n')
    return path


def shape(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    assert cli.main([*argv, "--json"]) == code
    return json.loads(capsys.readouterr().out)


def test_operator_add_makes_the_key_here_and_writes_a_portable_config(
    admin: OperatorsAdmin, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "for-alice"
    argv = ["operator", "add", "alice", "--role", "viewer", "--out", str(out)]
    reply = shape(capsys, *argv, "--config", str(config))
    (request,) = admin.requests
    assert (request.name, request.role) == ("alice", "viewer")
    assert b"PRIVATE KEY" not in request.csr_pem  # only the request went out
    assert reply == {
        "operator": {
            "name": "alice",
            "role": "viewer",
            "cert_serial": reply["operator"]["cert_serial"],
            "created_at": 10.0,
            "revoked_at": None,
            "state": "current",
        },
        "config": str(out / "cli.toml"),
    }
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    written = cli.load_config(out / "cli.toml")
    assert written.server == "plumb.example.com:8443"  # the admin's server
    cert = x509.load_pem_x509_certificate(written.cert.read_bytes())
    private = serialization.load_pem_private_key(written.key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert cert.public_key() == private.public_key()
    assert format(cert.serial_number, "x") == reply["operator"]["cert_serial"]


def test_operator_add_refuses_a_used_directory_before_asking_the_server(
    admin: OperatorsAdmin, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "cli.toml").write_text("mine\n")
    argv = ["operator", "add", "alice", "--role", "viewer", "--out", str(out)]
    assert cli.main([*argv, "--config", str(config)]) == 1
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert admin.requests == []
    assert (out / "cli.toml").read_text() == "mine\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["operator", "add", "alice", "--role", "root"], "invalid choice: 'root'"),
        (["audit", "--since", "yesterday"], "expected a time (2026-12-01"),
        (["audit", "--limit", "0"], "expected a number of entries from 1 to 10000"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(
    admin: OperatorsAdmin, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert admin.requests == []


def test_a_bad_operator_name_is_refused_before_anything_is_made(
    admin: OperatorsAdmin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x"
    assert cli.main(["operator", "add", "Alice", "--role", "viewer", "--out", str(out)]) == 1
    assert "invalid operator name 'Alice': use a lower-case name" in capsys.readouterr().err
    assert (admin.requests, out.exists()) == ([], False)


def test_operator_list_and_revoke_json_shapes(
    admin: OperatorsAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = {
        "name": "alice",
        "role": "viewer",
        "cert_serial": "5f3a",
        "created_at": 10.0,
        "revoked_at": None,
        "state": "current",
    }
    bob = {
        "name": "bob",
        "role": "admin",
        "cert_serial": "0b0b",
        "created_at": 20.0,
        "revoked_at": 30.0,
        "state": "revoked",
    }
    assert shape(capsys, "operator", "list") == {"operators": [alice]}
    assert shape(capsys, "operator", "list", "--all") == {"operators": [alice, bob]}
    assert shape(capsys, "operator", "revoke", "bob") == {"operator": bob, "already_revoked": True}
    assert admin.requests[-1].name == "bob"


def test_audit_json_shape(admin: OperatorsAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    listed = shape(capsys, "audit", "--since", "2h", "--limit", "2")
    request = admin.requests[-1]
    assert request.limit == 2 and request.since > 0
    assert listed == {
        "entries": [
            {
                "id": 7,
                "at": 40.0,
                "actor_kind": "operator",
                "actor": "alice",
                "role": "operator",
                "peer": "10.0.0.5:53211",
                "action": "Push",
                "details": DETAILS,
                "result": "ok",
                "reason": None,
                "revision": 5,
                "prev_hash": "1" * 64,
                "hash": "2" * 64,
            },
            {
                "id": 8,
                "at": 41.0,
                "actor_kind": "token",
                "actor": "0a1b2c3d",
                "role": None,
                "peer": "10.0.0.9:40000",
                "action": "Enroll",
                "details": {"node": "db-2"},
                "result": "refused",
                "reason": "token 0a1b2c3d allows only db-3, not 'db-2'",
                "revision": None,
                "prev_hash": "2" * 64,
                "hash": "3" * 64,
            },
        ],
        "more": True,
    }


def test_audit_table_shows_who_from_where_what_and_why(
    admin: OperatorsAdmin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.time, "localtime", time.gmtime)
    assert cli.main(["audit"]) == 0
    out, err = capsys.readouterr()
    header, push, enroll = out.splitlines()
    assert header.split() == ["ID", "WHEN", "WHO", "FROM", "ACTION", "RESULT", "DETAILS"]
    assert "operator alice (operator)  10.0.0.5:53211  Push" in push
    assert push.endswith("files=web.yaml revision=5 targeted=2 unchanged=false")
    assert enroll.endswith("node=db-2; token 0a1b2c3d allows only db-3, not 'db-2'")
    assert "older entries left out" in err


def test_audit_verify_exits_1_naming_the_first_broken_entry(
    admin: OperatorsAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["audit", "--verify"]) == 0
    assert capsys.readouterr().out == (
        f"audit log intact: 8 entries; head: entry 8, sha256 {'3' * 64} (note it: a log "
        "rewritten whole would not have it)\n"
    )
    assert shape(capsys, "audit", "--verify") == {
        "intact": True,
        "entries": 8,
        "head": {"id": 8, "hash": "3" * 64},
        "broken_at": None,
        "problem": None,
    }
    admin.intact = False
    assert cli.main(["audit", "--verify"]) == 1
    assert capsys.readouterr().out == (
        "audit log BROKEN at entry 4: entry 4 was changed after it was written: its hash "
        "does not match it (4 entries read)\n"
    )
    broken = shape(capsys, "audit", "--verify", code=1)
    assert (broken["intact"], broken["broken_at"]) == (False, 4)


@pytest.mark.parametrize(
    ("text", "seconds_before_now"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1.5h", 5400)],
)
def test_since_takes_an_age(text: str, seconds_before_now: float) -> None:
    assert cli._since(text, now=lambda: 1_000_000.0) == 1_000_000.0 - seconds_before_now


def test_since_takes_a_local_time() -> None:
    expected = datetime.datetime(2026, 12, 1, 10, 0).timestamp()
    assert cli._since("2026-12-01 10:00") == expected
    assert cli._since("2026-12-01T10:00") == expected
    assert cli._since("2026-12-01") == datetime.datetime(2026, 12, 1).timestamp()
