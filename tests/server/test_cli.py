"""``plumb report``: what the operator sees of a node's last run, against a fake Admin stub."""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import pytest

from protos import plumb_pb2 as pb
from server import cli

REPORT = pb.Report(
    id="r1",
    node_name="web-1",
    revision=4,
    trigger=pb.SCHEDULE,
    started_at=100.0,
    finished_at=101.5,
    results=[
        pb.ResourceResult(
            id="service/web",
            manifest="web",
            status=pb.REPAIRED,
            changes=[pb.Change(field="state", observed="inactive (dead)", desired="running")],
            observed={
                "main_pid": "812",
                "memory_rss": "12.4 MiB",
                "active": "active (running)",
                "unit_file": "",
            },
        ),
        pb.ResourceResult(id="file/motd", manifest="web", status=pb.IN_SYNC),
    ],
)


TOKEN = "plumb1.0123abcd." + "s" * 32 + "." + "f" * 64


class FakeAdmin:
    def CreateToken(self, request: pb.CreateTokenRequest, timeout: float) -> pb.CreateTokenResponse:
        return pb.CreateTokenResponse(
            token=TOKEN, expires_at=1e9, uses=request.uses, enroll_address="plumb.example:8444"
        )

    def GetReport(self, request: pb.GetReportRequest, timeout: float) -> pb.GetReportResponse:
        assert request.node_name == "web-1"
        return pb.GetReportResponse(found=True, report=REPORT)


@pytest.fixture(autouse=True)
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    def stub(args: argparse.Namespace) -> Any:
        return FakeAdmin()

    monkeypatch.setattr(cli, "_stub", stub)


def test_report_shows_the_observed_state_as_key_value_pairs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["report", "web-1"]) == 0

    lines = capsys.readouterr().out.splitlines()
    web = next(line for line in lines if line.startswith("service/web"))
    assert web.split(None, 3)[1:3] == ["web", "repaired"]
    assert web.endswith(
        'state: inactive (dead) → running; active="active (running)" main_pid=812'
        ' memory_rss="12.4 MiB" unit_file=""'
    )
    motd = next(line for line in lines if line.startswith("file/motd"))
    assert motd.split() == ["file/motd", "web", "in_sync"]  # nothing observed: no detail


def test_report_json_carries_the_observed_map(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "web-1", "--json"]) == 0

    results = {r["id"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert results["service/web"]["observed"]["memory_rss"] == "12.4 MiB"
    assert results["file/motd"]["observed"] == {}


ENROLL = f"printf '%s\\n' {TOKEN} | plumb-agent enroll --server plumb.example:8444 --token -"


@pytest.mark.parametrize(
    ("flags", "install"),
    [
        ([], "apt-get install -y plumb-agent"),
        (
            ["--package", "plumb-agent_0.1.0-1_amd64.deb"],
            "apt-get install -y ./plumb-agent_0.1.0-1_amd64.deb",
        ),
        (
            ["--package", "/srv/dist/plumb-agent_0.1.0-1_amd64.deb"],
            "apt-get install -y /srv/dist/plumb-agent_0.1.0-1_amd64.deb",
        ),
        (["--package", "dl/my agent.deb"], "apt-get install -y 'dl/my agent.deb'"),
        (
            ["--package", "plumb-agent-0.1.0-1.x86_64.rpm"],
            "dnf install -y ./plumb-agent-0.1.0-1.x86_64.rpm",
        ),
    ],
)
def test_token_create_install_command_is_one_line_to_paste(
    flags: list[str], install: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["token", "create", "--install-command", *flags]) == 0

    out, err = capsys.readouterr()
    assert out == f"{install} && {ENROLL} && systemctl start plumb-agent\n"
    assert "run this as root on the node" in err


def test_token_create_package_implies_the_install_command_and_json_carries_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["token", "create", "--package", "a.deb", "--uses", "3", "--json"]) == 0

    reply = json.loads(capsys.readouterr().out)
    assert reply["token"] == TOKEN
    assert reply["uses"] == 3
    assert reply["install_command"] == (
        f"apt-get install -y ./a.deb && {ENROLL} && systemctl start plumb-agent"
    )


def test_token_create_without_the_flag_prints_the_bare_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["token", "create"]) == 0

    assert capsys.readouterr().out == f"{TOKEN}\n"


# -- bad input: one line naming what is wrong, never a traceback ------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "create", "--ttl", "-5"], "--ttl: expected a number of seconds from 1 to"),
        (["token", "create", "--ttl", "5000000000"], "got '5000000000'"),
        (["token", "create", "--ttl", "soon"], "got 'soon'"),
        (["token", "create", "--uses", "0"], "--uses: expected a number of nodes from 1 to"),
        (["drift", "--limit", "-1"], "--limit: expected a number of events from 1 to 10000"),
        (["push", "--wait", "600", "x.yaml"], "--wait: expected a number of seconds"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_push_over_the_size_limit_is_refused_before_sending(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n# " + "é" * (3 * 2**20) + "\n")  # 6 MiB of UTF-8
    assert cli.main(["push", str(big)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("plumb: the manifests add up to 6.0 MiB; a push takes at most 4 MiB")
    assert err.count("\n") == 1


# -- --json: one stable shape per command ------------------------------------------


class ShapesAdmin(FakeAdmin):
    def Push(self, request: pb.PushRequest, timeout: float) -> pb.PushResponse:
        return pb.PushResponse(
            revision=5,
            targeted_nodes=["web-1", "web-2"],
            delivered_nodes=["web-1"],
            undelivered_nodes=["web-2"],
            unmatched_names=["db-9"],
        )

    def ListNodes(self, request: pb.ListNodesRequest, timeout: float) -> pb.ListNodesResponse:
        summary = pb.ComplianceRow(
            scope="node",
            name="web-1",
            compliant=1,
            expected=2,
            percent=50.0,
            counts={},
            percent_with_waivers=50.0,
        )
        summary.counts.update({"in_sync": 1, "pending": 1})
        never = pb.ComplianceRow(scope="node", name="web-2", percent=-1, percent_with_waivers=-1)
        return pb.ListNodesResponse(
            nodes=[
                pb.Node(
                    name="web-1",
                    labels={"role": "web"},
                    connected=True,
                    last_seen=100.5,
                    applied_revision=4,
                    latest_revision=5,
                    compliance=50.0,
                    enrolled_at=10.0,
                    reported_revision=4,
                    summary=summary,
                    clock_offset_s=0.25,
                    losses=[
                        pb.StateLoss(
                            what="spooled_reports",
                            count=12,
                            at=90.0,
                            received_at=95.0,
                            detail="spool.db was damaged (quick_check: ...)",
                        ),
                        pb.StateLoss(
                            what="spooled_reports", count=-1, at=80.0, detail="spool.db was empty"
                        ),
                    ],
                    conditions=[
                        pb.NodeCondition(
                            name="state_dir_unwritable", detail="state dir ...", since=70.0
                        )
                    ],
                    cert_serial="5f3a09",
                    enrolled_by_token="0a1b2c3d",
                    facts={"os.family": "debian"},
                    state="connected",
                    last_report_at=99.0,
                    run_interval_s=1860.0,
                ),
                pb.Node(
                    name="web-2",
                    latest_revision=5,
                    compliance=-1,
                    summary=never,
                    clock_offset_s=math.nan,
                    cert_serial="0b0b",
                    revoked_at=60.0,
                ),
            ]
        )

    def RevokeNode(self, request: pb.RevokeNodeRequest, timeout: float) -> pb.RevokeNodeResponse:
        return pb.RevokeNodeResponse(
            node_name=request.node_name, cert_serial="0b0b", revoked_at=60.0, sessions_ended=1
        )

    def RemoveNode(self, request: pb.RemoveNodeRequest, timeout: float) -> pb.RemoveNodeResponse:
        return pb.RemoveNodeResponse(
            node_name=request.node_name,
            cert_serial="0b0b",
            decommissioned_at=61.0,
            already_removed=True,
        )

    def ListDrift(self, request: pb.ListDriftRequest, timeout: float) -> pb.ListDriftResponse:
        change = pb.Change(field="mode", observed="0644", desired="0600")
        event = pb.DriftEvent(
            id=7,
            node_name="web-1",
            report_id="r9",
            resource_id="file/motd",
            manifest="web",
            status=pb.REPAIRED,
            changes=[change],
            detected_at=50.0,
        )
        return pb.ListDriftResponse(events=[event])

    def GetCompliance(
        self, request: pb.GetComplianceRequest, timeout: float
    ) -> pb.GetComplianceResponse:
        fleet = pb.ComplianceRow(
            scope="fleet", name="fleet", compliant=1, expected=3, percent=100 / 3
        )
        fleet.counts.update({"in_sync": 1, "failed": 1, "pending": 1})
        return pb.GetComplianceResponse(rows=[fleet], fleet=fleet, revision=5)


def test_json_shapes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_stub", lambda args: ShapesAdmin())

    def shape(*argv: str, code: int = 0) -> Any:
        assert cli.main([*argv, "--json"]) == code
        return json.loads(capsys.readouterr().out)

    assert shape("push", __file__) == {
        "revision": 5,
        "unchanged": False,
        "errors": [],
        "targeted": ["web-1", "web-2"],
        "delivered": ["web-1"],
        "undelivered": ["web-2"],
        "refused": {},
        "unmatched_names": ["db-9"],
        "unmatched_manifests": [],
        "released": {},
        "purging": {},
        "rollout": None,
    }
    web1, web2 = shape("nodes")["nodes"]
    assert web1 == {
        "name": "web-1",
        "labels": {"role": "web"},
        "connected": True,
        "last_seen": 100.5,
        "enrolled_at": 10.0,
        "applied_revision": 4,
        "reported_revision": 4,
        "latest_revision": 5,
        "catalog_problem": None,
        "clock_offset_s": 0.25,
        "compliance": {
            "scope": "node",
            "name": "web-1",
            "compliant": 1,
            "expected": 2,
            "percent": 50.0,
            "percent_with_waivers": 50.0,
            "counts": {"in_sync": 1, "pending": 1},
        },
        "losses": [
            {
                "what": "spooled_reports",
                "count": 12,
                "at": 90.0,
                "received_at": 95.0,
                "detail": "spool.db was damaged (quick_check: ...)",
            },
            {
                "what": "spooled_reports",
                "count": None,  # unknown
                "at": 80.0,
                "received_at": None,
                "detail": "spool.db was empty",
            },
        ],
        "conditions": [{"name": "state_dir_unwritable", "detail": "state dir ...", "since": 70.0}],
        "cert_serial": "5f3a09",
        "revoked_at": None,
        "decommissioned_at": None,
        "enrolled_by_token": "0a1b2c3d",
        "cert_not_after": None,
        "next_cert_serial": None,
        "cert_issuer": None,
        "facts": {"os.family": "debian"},
        "kept_revision": None,
        "state": "connected",
        "last_report_at": 99.0,
        "run_interval_s": 1860.0,
    }
    assert web2["losses"] == web2["conditions"] == []
    assert (web2["revoked_at"], web2["decommissioned_at"]) == (60.0, None)
    assert web2["enrolled_by_token"] is None  # enrolled before Plumb recorded it
    # Nothing known is null, never 0 or -1.
    assert (web2["last_seen"], web2["applied_revision"], web2["reported_revision"]) == (
        None,
        None,
        None,
    )
    assert web2["compliance"]["percent"] is None
    assert web2["clock_offset_s"] is None
    assert shape("drift") == {
        "events": [
            {
                "id": 7,
                "node": "web-1",
                "resource": "file/motd",
                "manifest": "web",
                "status": "repaired",
                "changes": [{"field": "mode", "observed": "0644", "desired": "0600", "diff": None}],
                "detected_at": 50.0,
                "report_id": "r9",
            }
        ]
    }
    compliance = shape("compliance", code=3)
    assert compliance["revision"] == 5
    assert compliance["fleet"]["percent"] == 33.33
    assert compliance["fleet"]["counts"] == {"in_sync": 1, "failed": 1, "pending": 1}
    assert shape("node", "revoke", "web-2") == {
        "node": "web-2",
        "cert_serial": "0b0b",
        "revoked_at": 60.0,
        "already_revoked": False,
        "sessions_ended": 1,
    }
    assert shape("node", "rm", "web-2") == {
        "node": "web-2",
        "cert_serial": "0b0b",
        "decommissioned_at": 61.0,
        "already_removed": True,
        "sessions_ended": 0,
    }
    report = shape("report", "web-1")
    assert (report["node"], report["revision"], report["trigger"]) == ("web-1", 4, "schedule")
    assert report["duration_s"] == 1.5
    assert [(r["id"], r["status"], r["error"]) for r in report["results"]] == [
        ("service/web", "repaired", None),
        ("file/motd", "in_sync", None),
    ]


# -- tokens: create (bound), list, revoke; node reenroll ------------------------------

VALID = pb.TokenInfo(
    id="0a1b2c3d",
    labels={"role": "db"},
    names=["db-2", "db-3"],
    created_at=10.0,
    expires_at=3610.0,
    uses=5,
    uses_left=3,
    state="valid",
    nodes=["db-2"],
)
REVOKED = pb.TokenInfo(
    id="99aa99aa",
    name_pattern="web-*",
    created_at=20.0,
    expires_at=3620.0,
    uses=1,
    uses_left=1,
    revoked_at=30.0,
    state="revoked",
)


class TokensAdmin(FakeAdmin):
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def CreateToken(self, request: pb.CreateTokenRequest, timeout: float) -> pb.CreateTokenResponse:
        self.requests.append(request)
        return pb.CreateTokenResponse(
            token=TOKEN,
            id="0123abcd",
            expires_at=1e9,
            uses=request.uses,
            enroll_address="plumb.example:8444",
            names=request.names,
            name_pattern=request.name_pattern,
        )

    def ListTokens(self, request: pb.ListTokensRequest, timeout: float) -> pb.ListTokensResponse:
        self.requests.append(request)
        return pb.ListTokensResponse(tokens=[VALID, REVOKED] if request.all else [VALID])

    def RevokeToken(self, request: pb.RevokeTokenRequest, timeout: float) -> pb.RevokeTokenResponse:
        self.requests.append(request)
        return pb.RevokeTokenResponse(token=REVOKED, already_revoked=True)

    def ReenrollNode(
        self, request: pb.ReenrollNodeRequest, timeout: float
    ) -> pb.CreateTokenResponse:
        self.requests.append(request)
        return pb.CreateTokenResponse(
            token=TOKEN,
            id="0123abcd",
            expires_at=1e9,
            uses=1,
            enroll_address="plumb.example:8444",
            names=[request.node_name],
            reenroll=True,
        )


@pytest.fixture
def tokens_admin(monkeypatch: pytest.MonkeyPatch) -> TokensAdmin:
    admin = TokensAdmin()
    monkeypatch.setattr(cli, "_stub", lambda args: admin)
    return admin


def test_token_create_binds_names_and_the_install_command_names_the_node(
    tokens_admin: TokensAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["token", "create", "--names", "db-2", "--install-command", "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert list(tokens_admin.requests[-1].names) == ["db-2"]
    assert reply == {
        "id": "0123abcd",
        "token": TOKEN,
        "expires_at": 1e9,
        "uses": 1,
        "enroll_address": "plumb.example:8444",
        "names": ["db-2"],
        "name_pattern": None,
        "reenroll": False,
        "install_command": f"apt-get install -y plumb-agent && {ENROLL} --name db-2 "
        "&& systemctl start plumb-agent",
    }
    assert cli.main(["token", "create", "--name-pattern", "web-*", "--uses", "3"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{TOKEN}\n"
    assert tokens_admin.requests[-1].name_pattern == "web-*"
    assert "only names matching 'web-*'" in err
    assert f"#   {ENROLL}\n" in err  # the hint passes the token on stdin too


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--names", "db-2,Db_3"], "--names: invalid node name 'Db_3'"),
        (["--names", "db-2,"], "--names: invalid node name ''"),
        (["--names", "a" * 65], "at most 64 characters"),
        (["--name-pattern", "web/*"], "--name-pattern: name pattern 'web/*' may hold only"),
        (["--names", "db-2", "--name-pattern", "db-*"], "not allowed with argument --names"),
    ],
)
def test_token_create_refuses_a_bad_binding_in_one_line(
    tokens_admin: TokensAdmin, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["token", "create", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert tokens_admin.requests == []


def test_token_list_and_revoke_json_shapes(
    tokens_admin: TokensAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    def shape(*argv: str) -> Any:
        assert cli.main([*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    valid = {
        "id": "0a1b2c3d",
        "labels": {"role": "db"},
        "names": ["db-2", "db-3"],
        "name_pattern": None,
        "reenroll": False,
        "created_at": 10.0,
        "expires_at": 3610.0,
        "uses": 5,
        "used": 2,
        "uses_left": 3,
        "revoked_at": None,
        "state": "valid",
        "nodes": ["db-2"],
    }
    revoked = {
        **valid,
        "id": "99aa99aa",
        "labels": {},
        "names": None,
        "name_pattern": "web-*",
        "created_at": 20.0,
        "expires_at": 3620.0,
        "uses": 1,
        "used": 0,
        "uses_left": 1,
        "revoked_at": 30.0,
        "state": "revoked",
        "nodes": [],
    }
    assert shape("token", "list") == {"tokens": [valid]}
    assert tokens_admin.requests[-1].all is False
    assert shape("token", "list", "--all") == {"tokens": [valid, revoked]}
    assert shape("token", "revoke", "99aa99aa") == {"token": revoked, "already_revoked": True}
    assert tokens_admin.requests[-1].id == "99aa99aa"


def test_token_list_shows_no_secret_and_what_each_token_allows(
    tokens_admin: TokensAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["token", "list", "--all"]) == 0
    out = capsys.readouterr().out
    header, first, second = out.splitlines()
    assert header.split() == [
        "ID",
        "STATE",
        "LABELS",
        "NAMES",
        "USED",
        "CREATED",
        "EXPIRES",
        "NODES",
    ]
    assert first.split()[:5] == ["0a1b2c3d", "valid", "role=db", "db-2,db-3", "2/5"]
    assert first.split()[-1] == "db-2"
    assert second.split()[:2] == ["99aa99aa", "revoked"]
    assert "web-*" in second
    assert "plumb1." not in out


def test_node_reenroll_prints_the_token_and_a_replacing_enroll_line(
    tokens_admin: TokensAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["node", "reenroll", "db-2"]) == 0
    out, err = capsys.readouterr()
    request = tokens_admin.requests[-1]
    assert (request.node_name, request.ttl_s) == ("db-2", 0)  # the server's default
    assert out == f"{TOKEN}\n"
    assert f"{ENROLL} --name db-2 --replace && systemctl restart plumb-agent" in err
    assert cli.main(["node", "reenroll", "db-2", "--ttl", "60", "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert tokens_admin.requests[-1].ttl_s == 60
    assert (reply["node"], reply["names"], reply["reenroll"], reply["uses"]) == (
        "db-2",
        ["db-2"],
        True,
        1,
    )
    assert reply["enroll_command"] == f"{ENROLL} --name db-2 --replace"


def test_global_options_go_before_or_after_the_command(tmp_path: Any) -> None:
    from agent import main as agent_main
    from server import main as server_main

    for argv in (["--data-dir", "/x", "init"], ["init", "--data-dir", "/x"]):
        assert str(server_main._parser().parse_args(argv).data_dir) == "/x"
    assert str(server_main._parser().parse_args(["run"]).data_dir) == str(
        server_main.DEFAULT_DATA_DIR
    )
    for argv in (["--config", "c.toml", "nodes"], ["nodes", "--config", "c.toml"]):
        assert str(cli._parser().parse_args(argv).config) == "c.toml"
    for argv in (["--state-dir", "/s", "status"], ["status", "--state-dir", "/s"]):
        assert str(agent_main._parser().parse_args(argv).state_dir) == "/s"
    assert agent_main._parser().parse_args(["status"]).state_dir is None


def test_nodes_says_what_a_node_lost_below_the_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_stub", lambda args: ShapesAdmin())
    monkeypatch.setattr(cli.time, "localtime", time.gmtime)
    assert cli.main(["nodes"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("NODE")
    assert err.splitlines()[-2:] == [
        "web-1 lost 12 spooled reports at 1970-01-01 00:01:30 "
        "(spool.db was damaged (quick_check: ...))",
        "web-1 lost an unknown number of spooled reports at 1970-01-01 00:01:20 "
        "(spool.db was empty)",
    ]
