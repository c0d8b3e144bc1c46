"""Server away: the agent keeps enforcing its cached catalog and spools; every report
arrives exactly once when the server is back."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from agent.spool import Spool
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

MANIFEST = """\
name: base
target: {all: true}
resources:
  - kind: file
    name: conf
    spec: {path: /app.conf, content: "desired\\n"}
"""


def _server_rows(server: Server, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(server.data_dir / "plumb.db") as db:
        return db.execute(sql, args).fetchall()


def _stored_once(server: Server, report_ids: list[str]) -> bool:
    marks = ",".join("?" * len(report_ids))
    rows = _server_rows(server, f"SELECT id FROM reports WHERE id IN ({marks})", *report_ids)
    return sorted(r[0] for r in rows) == sorted(report_ids)


def test_agent_enforces_cached_catalog_offline_and_delivers_reports_once(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    assert server.push(write(tmp_path / "base.yaml", MANIFEST)).returncode == 0
    agent.start(interval=1, splay=0)
    conf = agent.path("/app.conf")
    wait_for(lambda: conf.exists() and conf.read_text() == "desired\n", what="converged")

    server.kill()
    conf.write_text("changed while the server was down\n")
    wait_for(lambda: conf.read_text() == "desired\n", what="repair without the server")
    spool = Spool(agent.state_dir / "spool.db")
    wait_for(lambda: len(spool.pending()) >= 2, what="reports spooled")
    offline_ids = [report_id for report_id, _ in spool.pending()]

    server.start()
    wait_for(lambda: _stored_once(server, offline_ids), what="spooled reports delivered")
    drift = _server_rows(
        server, "SELECT report_id, resource_id, status FROM drift_events WHERE node = 'edge-1'"
    )
    assert len(drift) == 1, drift  # the one out-of-band change, once
    assert drift[0][0] in offline_ids and drift[0][1:] == ("file/conf", "repaired")


def test_a_report_sent_twice_is_counted_once(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    assert server.push(write(tmp_path / "base.yaml", MANIFEST)).returncode == 0
    assert agent.run_once().returncode == 0
    agent.path("/app.conf").write_text("drift\n")
    assert agent.run_once().returncode == 0
    reports_before = _server_rows(server, "SELECT count(*) FROM reports")[0][0]
    drift_before = _server_rows(server, "SELECT count(*) FROM drift_events")
    assert drift_before == [(1,)]
    # Simulate a lost ack: the agent still holds a report the server already stored.
    from protos import plumb_pb2 as pb

    stored = _server_rows(server, "SELECT body FROM reports ORDER BY finished_at DESC LIMIT 1")
    report = pb.Report.FromString(stored[0][0])
    Spool(agent.state_dir / "spool.db").add(report.id, lambda _: report.SerializeToString())

    third = agent.run_once()  # sends the duplicate plus its own new report
    assert third.returncode == 0, third.stderr
    assert Spool(agent.state_dir / "spool.db").count() == 0  # both acked
    assert _server_rows(server, "SELECT count(*) FROM reports")[0][0] == reports_before + 1
    assert _server_rows(server, "SELECT count(*) FROM drift_events") == drift_before


def test_a_noop_run_does_not_forget_what_had_converged(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    manifest = "name: m\ntarget: {all: true}\nresources:\n"
    manifest += '  - {kind: file, name: motd, spec: {path: /etc/motd, content: "hi\\n"}}\n'
    server.push(write(tmp_path / "m.yaml", manifest))
    assert agent.run_once().returncode == 0  # converged: file/motd repaired
    assert agent.run_once("--noop").returncode == 0  # in sync, changes nothing
    agent.path("/etc/motd").write_text("edited by hand\n")
    assert agent.run_once().returncode == 0
    # Repaired, and known as drift: it had converged to this spec before the noop run.
    events = server.cli_json("drift", "--node", "edge-1")["events"]
    assert [(e["resource"], e["status"]) for e in events] == [("file/motd", "repaired")]
