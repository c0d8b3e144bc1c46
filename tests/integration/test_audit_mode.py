"""Audit vs enforce, for real: a resource's own mode, and a host's audit lock.

A real server and a real agent daemon over mutual TLS on loopback
(tests/integration/harness.py); the lock is set and lifted with the real
``plumb-agent audit-lock`` against the agent's state dir while the daemon
runs, and the server's view comes from ``plumb nodes`` and ``plumb report``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

MIXED = """\
name: web
target:
  labels: {role: web}
mode: enforce
resources:
  - kind: file
    name: enforced
    spec: {path: /etc/enforced.conf, content: "written\\n"}
  - kind: file
    name: audited
    spec: {path: /etc/audited.conf, content: "never written\\n"}
    mode: audit
"""

MOTD = """\
name: web
target:
  labels: {role: web}
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "CONTENT\\n", mode: "0644"}
"""


def _statuses(server: Server) -> dict[str, str]:
    return {r["id"]: r["status"] for r in server.cli_json("report", "web-1")["results"]}


def _started(server: Server, enrolled: Callable[..., Agent]) -> Agent:
    agent = enrolled("web-1", role="web")
    (agent.root / "etc").mkdir()
    agent.start(interval=3600)  # no periodic run during the test: only pushes and watchers
    wait_for(lambda: server.nodes().get("web-1", {}).get("connected"), what="session")
    return agent


def _applied(server: Server, revision: int) -> None:
    wait_for(
        lambda: server.nodes()["web-1"]["applied_revision"] == revision,
        what=f"report of revision {revision} stored",
    )


def _audit_lock(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``plumb-agent audit-lock`` against the agent's state dir."""
    return subprocess.run(
        agent._cmd("audit-lock", *args), capture_output=True, text=True, timeout=60
    )


def _conditions(server: Server) -> dict[str, Any]:
    return {c["name"]: c for c in server.nodes()["web-1"]["conditions"]}


def test_a_resource_in_audit_is_not_changed_beside_one_enforced(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = _started(server, enrolled)
    pushed = server.push(write(tmp_path / "web.yaml", MIXED))
    assert pushed.returncode == 0, pushed.stderr

    enforced = agent.path("/etc/enforced.conf")
    wait_for(lambda: enforced.exists() and enforced.read_text() == "written\n", what="enforced")
    _applied(server, 1)
    assert not agent.path("/etc/audited.conf").exists()
    assert _statuses(server) == {"file/enforced": "repaired", "file/audited": "drifted"}
    report = server.cli_json("report", "web-1")
    assert (report["trigger"], report["noop"]) == ("push", False)
    audited = next(r for r in report["results"] if r["id"] == "file/audited")
    assert {"field": "state", "observed": "absent", "desired": "present", "diff": None} in audited[
        "changes"
    ]


def test_the_audit_lock_holds_pushes_and_watchers_until_it_is_lifted(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = _started(server, enrolled)
    motd = agent.path("/etc/motd")

    # Set while the daemon runs: it needs no restart to take it.
    locked = _audit_lock(agent, "on", "--reason", "incident 4711")
    assert locked.returncode == 0, locked.stderr
    assert "audit lock on since" in locked.stdout
    held = wait_for(lambda: _conditions(server).get("audit_lock"), what="audit_lock shown")
    assert "by uid 0 (incident 4711): nothing is enforced on this host" in held["detail"]
    assert "'plumb-agent audit-lock off' lifts it" in held["detail"]
    assert held["since"] is not None

    assert server.push(write(tmp_path / "web.yaml", MOTD.replace("CONTENT", "one"))).returncode == 0
    _applied(server, 1)
    assert not motd.exists()
    assert _statuses(server) == {"file/motd": "drifted"}
    assert server.cli_json("report", "web-1")["noop"] is False  # a run, only in audit
    table = server.cli("nodes")
    assert "web-1: audit lock on since" in table.stderr and "(incident 4711)" in table.stderr

    lifted = _audit_lock(agent, "off")
    assert lifted.returncode == 0, lifted.stderr
    assert server.push(write(tmp_path / "web.yaml", MOTD.replace("CONTENT", "two"))).returncode == 0
    wait_for(lambda: motd.exists() and motd.read_text() == "two\n", what="written once lifted")
    _applied(server, 2)
    assert _statuses(server) == {"file/motd": "repaired"}
    wait_for(lambda: "audit_lock" not in _conditions(server), what="audit_lock cleared")

    # Locked again, a watcher's run only records the drift it was woken for.
    assert _audit_lock(agent, "on").returncode == 0
    wait_for(lambda: "audit_lock" in _conditions(server), what="audit_lock shown again")
    edited = motd.with_name(".motd.swp")
    edited.write_text("tampered\n")
    os.replace(edited, motd)
    events = wait_for(
        lambda: server.cli_json("drift", "--node", "web-1").get("events", []),
        what="drift event stored",
    )
    # (each run that finds it so says it again: there may be more than one)
    assert {(e["resource"], e["status"]) for e in events} == {("file/motd", "drifted")}
    assert server.cli_json("report", "web-1")["trigger"] == "watch"
    assert motd.read_text() == "tampered\n"
