"""``plumb report``: what the operator sees of a node's last run, against a fake Admin stub."""

from __future__ import annotations

import argparse
import json
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


ENROLL = f"plumb-agent enroll --server plumb.example:8444 --token {TOKEN}"


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
