"""Event-driven drift: an out-of-band edit is repaired at once, not at the next periodic run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, command, terminate, wait_for
from tests.integration.test_converge import WEB


def _drift(server: Server) -> list[Any]:
    return list(server.cli_json("drift", "--node", "web-1").get("events", []))


def test_out_of_band_edit_is_repaired_by_a_watcher(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1", role="web")
    (agent.root / "etc").mkdir()
    agent.start(interval=3600)  # no periodic run during this test
    wait_for(lambda: server.nodes().get("web-1", {}).get("connected"), what="session")
    assert server.push(write(tmp_path / "web.yaml", WEB)).returncode == 0

    conf = agent.path("/etc/app.conf")
    wait_for(lambda: conf.exists() and conf.read_text() == "port = 8080\n", what="converged")
    wait_for(lambda: server.nodes()["web-1"]["applied_revision"] == 1, what="report stored")
    assert server.cli_json("report", "web-1")["trigger"] == "push"

    # An editor's way of saving: a new file renamed over the old one.
    edited = conf.with_name(".app.conf.swp")
    edited.write_text("port = 9999\n")
    os.chmod(edited, 0o644)
    os.replace(edited, conf)

    wait_for(
        lambda: conf.read_text() == "port = 8080\n" and conf.stat().st_mode & 0o777 == 0o600,
        timeout=10,
        what="repaired by the watcher",
    )
    events = wait_for(lambda: _drift(server), what="drift event stored")
    assert [(e["resource"], e["status"]) for e in events] == [("file/app-conf", "repaired")]
    assert {
        "field": "content",
        "observed": '"port = 9999\\n"',
        "desired": '"port = 8080\\n"',
        "diff": None,
    } in events[0]["changes"]
    report = server.cli_json("report", "web-1")
    assert report["trigger"] == "watch"
    assert {r["id"]: r["status"] for r in report["results"]} == {
        "file/motd": "in_sync",
        "file/app-conf": "repaired",
    }

    # A managed file deleted by hand comes back the same way.
    agent.path("/etc/motd").unlink()
    wait_for(lambda: agent.path("/etc/motd").exists(), timeout=10, what="motd restored")
    assert "plumb.agent.watch" in agent.logs()


def test_no_watch_leaves_drift_to_the_periodic_run(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1", role="web")
    (agent.root / "etc").mkdir()
    assert server.push(write(tmp_path / "web.yaml", WEB)).returncode == 0
    assert agent.run_once().returncode == 0  # a cached catalog: watchers would start at once

    daemon = [*command("agent.main"), "--state-dir", str(agent.state_dir), "daemon"]
    log_path = tmp_path / "no-watch.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*daemon, "--root", str(agent.root), "--interval", "3600", "--no-watch"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "session established" in log_path.read_text(), what="session")
    finally:
        terminate(process, 15)
    # Watchers would have said so before the session was even opened.
    assert "watching" not in log_path.read_text()
