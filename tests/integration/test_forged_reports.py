"""Reports are checked against what the node was given: a forged one lifts nothing.

A real node enrolls and runs, then sends, with its own certificate, a
report that invents a resource (with a drift event, a manifest and a
control of its own) and claims its real resources for another manifest and
control. The server keeps only results for resources of the node's catalog
at that revision, with that catalog's manifests and controls: no invented
drift event, no invented manifest or control, the same number of resources
expected. A report of a revision the node was never given is not stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from agent.state import StateDir
from agent.tls import secure_channel
from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

MANIFEST = """\
name: base
target: {all: true}
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "hi\\n"}
    controls: [CIS-1.7.1]
  - kind: file
    name: broken
    spec: {path: /missing-dir/conf, content: "x\\n"}
"""


def forged(agent: Agent, revision: int, sequence: int) -> pb.Report:
    def result(rid: str, status: int, drift: bool = False) -> pb.ResourceResult:
        kind, name = rid.split("/")
        return pb.ResourceResult(
            id=rid,
            kind=kind,
            name=name,
            manifest="made-up",
            controls=["SOC2-FAKE"],
            status=status,
            drift=drift,
            changes=[pb.Change(field="content", observed="a", desired="b")] if drift else [],
        )

    return pb.Report(
        id=f"forged-{revision}-{sequence}",
        node_name=agent.name,
        revision=revision,
        sequence=sequence,
        trigger=pb.WATCH,
        results=[
            result("file/motd", pb.IN_SYNC),
            result("file/broken", pb.IN_SYNC),
            result("file/evil", pb.REPAIRED, drift=True),
            result("file/evil2", pb.IN_SYNC),
        ],
    )


def send(server: Server, agent: Agent, report: pb.Report) -> list[str]:
    """Send ``report`` on a session of the node's own; the ids the server acked."""
    hello = pb.AgentMessage(hello=pb.Hello(node_name=agent.name, applied_revision=report.revision))
    acked: list[str] = []
    with secure_channel(StateDir(agent.state_dir), server.agent_address) as channel:
        call = pb_grpc.AgentStub(channel).Session(
            iter([hello, pb.AgentMessage(report=report)]), timeout=10
        )
        try:
            for message in call:
                if message.WhichOneof("kind") == "ack":
                    acked.append(message.ack.report_id)
                    break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
    return acked


def compliance(server: Server) -> dict[str, Any]:
    result = server.cli("compliance", "--json", check=False)
    return dict(json.loads(result.stdout))


def test_a_forged_report_invents_nothing(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "base.yaml", MANIFEST))
    assert agent.run_once().returncode == 4  # file/broken failed: its directory is missing
    before = compliance(server)
    assert (before["fleet"]["compliant"], before["fleet"]["expected"]) == (1, 2)

    assert send(server, agent, forged(agent, revision=1, sequence=50)) == ["forged-1-50"]
    report = wait_for(
        lambda: (r := server.cli_json("report", "web-1"))["id"] == "forged-1-50" and r,
        what="the checked report",
    )
    assert [r["id"] for r in report["results"]] == ["file/motd", "file/broken"]
    assert {r["manifest"] for r in report["results"]} == {"base"}
    assert [r["controls"] for r in report["results"]] == [["CIS-1.7.1"], []]
    events = server.cli_json("drift", "--node", "web-1")["events"]
    assert [e for e in events if e["resource"].startswith("file/evil")] == []

    after = compliance(server)
    assert after["fleet"]["expected"] == 2  # nothing invented is expected or counted
    names = {(row["scope"], row["name"]) for row in after["rows"]}
    assert ("manifest", "made-up") not in names and ("control", "SOC2-FAKE") not in names
    assert "file/evil" in server.logs() and "not in its catalog" in server.logs()

    assert send(server, agent, forged(agent, revision=99, sequence=51)) == ["forged-99-51"]
    assert server.cli_json("report", "web-1")["id"] == "forged-1-50"  # not stored
    assert "revision 99, which it was never given" in server.logs()
