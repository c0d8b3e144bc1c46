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


class FakeAdmin:
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
