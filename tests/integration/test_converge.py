"""Push -> agents converge -> drift is detected and repaired; noop and audit change nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

WEB = """\
name: web
target:
  labels: {role: web}
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "managed by plumb\\n", mode: "0644"}
  - kind: file
    name: app-conf
    spec: {path: /etc/app.conf, content: "port = 8080\\n", mode: "0600"}
    require: [file/motd]
    controls: [CIS-1.7.1]
"""


def _prepare(agent: Agent) -> None:
    (agent.root / "etc").mkdir()


def test_push_converges_two_agents(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = [enrolled("web-1", role="web"), enrolled("web-2", role="web")]
    for agent in agents:
        _prepare(agent)
        agent.start()
    wait_for(lambda: all(n["connected"] for n in server.nodes().values()), what="sessions")

    pushed = server.push(write(tmp_path / "web.yaml", WEB))
    assert pushed.returncode == 0, pushed.stderr
    assert "revision 1" in pushed.stdout and "web-1, web-2" in pushed.stdout

    for agent in agents:
        conf = agent.path("/etc/app.conf")
        wait_for(
            lambda conf=conf: conf.exists() and conf.read_text() == "port = 8080\n",
            what=f"{agent.name} converged",
        )
        assert oct(conf.stat().st_mode & 0o777) == "0o600"
    wait_for(
        lambda: all(n["applied_revision"] == 1 for n in server.nodes().values()),
        what="reports stored",
    )
    report = server.cli_json("report", "web-1")
    assert {r["id"]: r["status"] for r in report["results"]} == {
        "file/motd": "repaired",
        "file/app-conf": "repaired",
    }
    assert report["trigger"] == "push"
    table = server.cli("nodes").stdout
    assert "web-1" in table and "100.0%" in table
    # A first rollout is a change, not drift.
    assert server.cli_json("drift").get("events", []) == []


def test_out_of_band_change_is_repaired_by_the_next_run(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1", role="web")
    _prepare(agent)
    assert server.push(write(tmp_path / "web.yaml", WEB)).returncode == 0
    first = agent.run_once()
    assert first.returncode == 0, first.stderr

    conf = agent.path("/etc/app.conf")
    conf.write_text("port = 9999\n")
    conf.chmod(0o644)
    repaired = agent.run_once()
    assert repaired.returncode == 0, repaired.stderr
    assert conf.read_text() == "port = 8080\n"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"

    events = server.cli_json("drift", "--node", "web-1")["events"]
    assert len(events) == 1
    event = events[0]
    assert (event["resource"], event["status"]) == ("file/app-conf", "repaired")
    assert {
        "field": "content",
        "observed": '"port = 9999\\n"',
        "desired": '"port = 8080\\n"',
        "diff": None,  # one short line: the values say it all
    } in event["changes"]
    assert "file/app-conf" in server.cli("drift").stdout


def test_noop_reports_drifted_and_changes_nothing(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1", role="web")
    _prepare(agent)
    assert server.push(write(tmp_path / "web.yaml", WEB)).returncode == 0
    assert agent.run_once().returncode == 0
    conf = agent.path("/etc/app.conf")
    conf.write_text("tampered\n")

    noop = agent.run_once("--noop")
    assert noop.returncode == 2, noop.stderr  # differences remain
    assert conf.read_text() == "tampered\n"
    report = server.cli_json("report", "web-1")
    assert report["noop"] is True
    statuses = {r["id"]: r["status"] for r in report["results"]}
    assert statuses == {"file/motd": "in_sync", "file/app-conf": "drifted"}
    compliance = server.cli("compliance", check=False)
    assert compliance.returncode == 3  # not fully compliant
    assert "50.0%" in compliance.stdout


def test_audit_mode_reports_drifted_and_changes_nothing(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1", role="web")
    _prepare(agent)
    audit = WEB.replace("resources:", "mode: audit\nresources:")
    assert server.push(write(tmp_path / "web.yaml", audit)).returncode == 0
    result = agent.run_once()
    assert result.returncode == 2
    assert not agent.path("/etc/motd").exists()
    report = server.cli_json("report", "web-1")
    assert report["noop"] is False
    assert {r["status"] for r in report["results"]} == {"drifted"}
    motd = next(r for r in report["results"] if r["id"] == "file/motd")
    assert {"field": "state", "observed": "absent", "desired": "present", "diff": None} in motd[
        "changes"
    ]


def test_failure_skips_dependents_and_keeps_the_rest(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1", role="web")  # no /etc under its root: writes there fail
    (agent.root / "srv").mkdir()
    manifest = (
        WEB
        + """\
  - kind: file
    name: unrelated
    spec: {path: /srv/data, content: "x"}
"""
    )
    assert server.push(write(tmp_path / "web.yaml", manifest)).returncode == 0
    result = agent.run_once()
    assert result.returncode == 4, result.stderr
    report = server.cli_json("report", "web-1")
    by_id = {r["id"]: r for r in report["results"]}
    assert by_id["file/motd"]["status"] == "failed"
    assert "/etc" in by_id["file/motd"]["error"]
    assert by_id["file/app-conf"]["status"] == "skipped"
    assert "file/motd" in by_id["file/app-conf"]["error"]
    assert by_id["file/unrelated"]["status"] == "repaired"
    assert agent.path("/srv/data").read_text() == "x"


def test_tampered_cached_catalog_is_never_applied(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    from protos import plumb_pb2 as pb

    agent = enrolled("web-1", role="web")
    _prepare(agent)
    assert server.push(write(tmp_path / "web.yaml", WEB)).returncode == 0
    assert agent.run_once().returncode == 0
    cache = agent.state_dir / "catalog.pb"
    signed = pb.SignedCatalog.FromString(cache.read_bytes())
    signed.payload = signed.payload.replace(b"port = 8080", b"port = 6666")
    cache.write_bytes(signed.SerializeToString())

    server.stop()  # nothing can replace the tampered copy
    result = agent.run_once(timeout=2)
    assert result.returncode == 1
    assert "signature does not verify" in result.stderr
    assert agent.path("/etc/app.conf").read_text() == "port = 8080\n"

    server.start()  # the server's signed copy replaces it on the next contact
    healed = agent.run_once()
    assert healed.returncode == 0, healed.stderr
    assert b"port = 6666" not in cache.read_bytes()
