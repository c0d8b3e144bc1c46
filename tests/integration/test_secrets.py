"""Secrets stay secret: a sensitive resource's values are nowhere but on the node it is for.

A real agent and server: a ``sensitive: true`` file is applied and then
repaired after an out-of-band edit. Neither value (the desired secret nor
the one found on the node) is in the agent's log, in ``plumb report`` or
``plumb drift``, nor in what the server stores of reports; the changes say
"(sensitive)". (The desired value is in the manifest, which the server
stores and signs into the node's catalog: that is the desired state.) A
plain file's short content is in its report (that is what reports are for)
but only as a hash in the agent's log.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

SECRET = "hunter2-db-password"
FOUND = "planted-by-someone-else"
MANIFEST = f"""\
name: app
target: {{all: true}}
resources:
  - kind: file
    name: token
    spec: {{path: /etc/app-token, content: "{SECRET}\\n", mode: "0600"}}
    sensitive: true
  - kind: file
    name: motd
    spec: {{path: /etc/motd, content: "plain words\\n"}}
"""


def reported(server: Server) -> str:
    """Every row the server stores of what nodes reported, as text."""
    uri = f"file:{server.data_dir / 'plumb.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        tables = ("reports", "resource_status", "drift_events")
        return repr([db.execute(f"SELECT * FROM {t}").fetchall() for t in tables])


def test_sensitive_values_are_in_no_log_report_or_store(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("app-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "app.yaml", MANIFEST))
    agent.start()
    token, motd = agent.path("/etc/app-token"), agent.path("/etc/motd")
    wait_for(lambda: motd.is_file() and token.is_file(), what="the first apply")
    assert token.read_text() == f"{SECRET}\n"

    token.write_text(f"{FOUND}\n")
    motd.write_text("tampered\n")
    wait_for(lambda: token.read_text() == f"{SECRET}\n", what="the repair")
    events = wait_for(
        lambda: (
            {e["resource"]: e for e in server.cli_json("drift", "--node", "app-1")["events"]}
            if len(server.cli_json("drift", "--node", "app-1")["events"]) >= 2
            else None
        ),
        what="both drift events",
    )
    assert events["file/token"]["changes"] == [
        {"field": "content", "observed": "(sensitive)", "desired": "(sensitive)", "diff": None}
    ]
    assert events["file/motd"]["changes"] == [
        {
            "field": "content",
            "observed": '"tampered\\n"',
            "desired": '"plain words\\n"',
            "diff": None,
        }
    ]
    report = server.cli("report", "app-1", "--json").stdout
    [token_result] = [r for r in json.loads(report)["results"] if r["id"] == "file/token"]
    assert set(token_result["observed"].values()) <= {"(sensitive)"}, token_result

    seen_by_operator = report + server.cli("report", "app-1").stdout + json.dumps(events)
    stored = reported(server)
    everything = b"".join(p.read_bytes() for p in server.data_dir.glob("plumb.db*"))
    log = agent.logs()
    for secret in (SECRET, FOUND):
        assert secret not in seen_by_operator
        assert secret not in stored
        assert secret not in log
    assert FOUND.encode() not in everything  # what the node had: nowhere on the server
    assert "plain words" not in log and "tampered" not in log  # a hash there, not the text
    assert "file/motd: repaired (content: sha256:" in log, log
