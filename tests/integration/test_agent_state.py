"""The agent is never stopped by its own state: a bad cached catalog or a damaged spool is
set aside, the agent carries on, and what was lost shows on the server."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.agent.damage import corrupt_the_index
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for


def manifest(content: str) -> str:
    return f"""\
name: base
target: {{all: true}}
resources:
  - kind: file
    name: conf
    spec: {{path: /app.conf, content: "{content}\\n"}}
"""


def push(server: Server, tmp_path: Path, content: str) -> None:
    pushed = server.push(write(tmp_path / "base.yaml", manifest(content)))
    assert pushed.returncode == 0, pushed.stderr


def has(agent: Agent, content: str) -> bool:
    conf = agent.path("/app.conf")
    return conf.exists() and conf.read_text() == f"{content}\n"


def status_text(agent: Agent) -> subprocess.CompletedProcess[str]:
    return subprocess.run(agent._cmd("status"), capture_output=True, text=True, timeout=60)


def rejected(agent: Agent) -> list[Path]:
    return sorted(agent.state_dir.glob("catalog.pb.rejected-*"))


def losses(server: Server, node: str) -> list[dict[str, Any]]:
    return list(server.nodes()[node]["losses"])


BAD_CATALOGS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "garbage": lambda mine, theirs: b"\xde\xad\xbe\xef not a catalog" * 64,
    "truncated": lambda mine, theirs: mine[: len(mine) // 3],
    "another node's": lambda mine, theirs: theirs,
}


@pytest.mark.parametrize("damage", BAD_CATALOGS)
def test_a_bad_cached_catalog_is_set_aside_and_a_fresh_one_is_run(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path, damage: str
) -> None:
    agent, other = enrolled("web-1"), enrolled("web-2")
    push(server, tmp_path, "one")
    assert agent.run_once().returncode == 0 and other.run_once().returncode == 0
    bad = BAD_CATALOGS[damage](
        (agent.state_dir / "catalog.pb").read_bytes(), (other.state_dir / "catalog.pb").read_bytes()
    )
    (agent.state_dir / "catalog.pb").write_bytes(bad)

    # status says so, and neither crashes nor changes anything.
    text = status_text(agent)
    assert text.returncode == 0, text.stderr
    assert "catalog revision:  none (" in text.stdout and "is not used" in text.stdout
    shape = agent.status()
    assert shape["catalog_revision"] == 0 and "is not used" in shape["catalog_problem"]
    assert (agent.state_dir / "catalog.pb").read_bytes() == bad

    agent.path("/app.conf").write_text("changed while the agent was stopped\n")
    agent.start()
    # The daemon starts, asks for a fresh catalog (hello: applied revision 0) and runs it.
    wait_for(lambda: has(agent, "one"), what="the fresh catalog run")
    assert agent.status()["catalog_revision"] == 1
    [aside] = rejected(agent)
    assert aside.read_bytes() == bad
    push(server, tmp_path, "two")
    wait_for(lambda: has(agent, "two"), what="the next push run")
    assert agent.process is not None and agent.process.poll() is None
    assert agent.logs().count("cached catalog") == 1, agent.logs()  # logged once
    [loss] = wait_for(lambda: losses(server, "web-1"), what="the loss on the server")
    assert (loss["what"], loss["count"]) == ("cached_catalog", 1)
    assert aside.name in loss["detail"]
    assert losses(server, "web-2") == []


def test_a_catalog_damaged_while_the_daemon_runs_is_replaced_at_once(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    push(server, tmp_path, "one")
    agent.start(interval=1, splay=0)
    wait_for(lambda: has(agent, "one"), what="converged")
    (agent.state_dir / "catalog.pb").write_bytes(b"overwritten")
    # The next periodic run finds it, sets it aside and reconnects: the new hello
    # gets a fresh catalog, which keeps being enforced.
    wait_for(lambda: rejected(agent), what="the catalog set aside")
    wait_for(lambda: agent.status()["catalog_revision"] == 1, what="a fresh catalog cached")
    agent.path("/app.conf").write_text("drift\n")
    wait_for(lambda: has(agent, "one"), what="still enforcing")
    [loss] = wait_for(lambda: losses(server, "web-1"), what="the loss on the server")
    assert loss["what"] == "cached_catalog"


SPOOL_DAMAGE: dict[str, tuple[Callable[[Path], object], int | None]] = {
    # how spool.db is damaged, and how many reports the server hears were lost
    "damaged": (corrupt_the_index, 2),
    "empty": (lambda p: p.write_bytes(b""), None),  # SQLite would take it for a new one
}


@pytest.mark.parametrize("damage", SPOOL_DAMAGE)
def test_a_damaged_spool_is_replaced_and_the_loss_reaches_the_server(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path, damage: str
) -> None:
    agent = enrolled("edge-1")
    push(server, tmp_path, "one")
    assert agent.run_once().returncode == 0
    server.stop()
    for _ in range(2):  # two reports the server never gets
        agent.path("/app.conf").write_text("drift\n")
        assert agent.run_once("--timeout", "1").returncode == 0
    assert agent.status()["spooled_reports"] == 2
    spool = agent.state_dir / "spool.db"
    for sidecar in ("-wal", "-shm"):
        Path(f"{spool}{sidecar}").unlink(missing_ok=True)  # checkpointed by the last close
    make, lost = SPOOL_DAMAGE[damage]
    make(spool)

    # Found by a run while the server is still away: kept until the server has it.
    assert agent.run_once("--timeout", "1").returncode == 0
    [aside] = [p for p in agent.state_dir.glob("spool.db.damaged-*") if p.name.count("-") == 1]
    assert agent.status()["losses"][0]["reported"] is False

    server.start()
    agent.start()
    [loss] = wait_for(lambda: losses(server, "edge-1"), what="the loss on the server")
    assert (loss["what"], loss["count"]) == ("spooled_reports", lost)
    assert aside.name in loss["detail"]
    phrase = "2 spooled reports" if lost else "an unknown number of spooled reports"
    assert f"edge-1 lost {phrase} at " in server.cli("nodes").stderr
    wait_for(lambda: agent.status()["losses"][0]["reported"], what="the agent told it is recorded")
    # ... and the agent carries on with its fresh spool.
    push(server, tmp_path, "two")
    wait_for(lambda: has(agent, "two"), what="the next push run")
    wait_for(lambda: agent.status()["spooled_reports"] == 0, what="its reports delivered")
    assert len(losses(server, "edge-1")) == 1  # sent with every hello, recorded once


def test_a_spooled_report_that_does_not_parse_is_dropped_not_sent_for_ever(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    push(server, tmp_path, "one")
    assert agent.run_once().returncode == 0
    with sqlite3.connect(agent.state_dir / "spool.db") as db:  # a row damaged in place
        db.execute("INSERT INTO reports (id, created, body) VALUES ('damaged', 0, x'ffffffff0a')")
    db.close()
    agent.path("/app.conf").write_text("drift\n")
    assert agent.run_once().returncode == 0
    assert agent.status()["spooled_reports"] == 0  # its own report delivered, the bad one gone
    assert agent.run_once().returncode == 0  # the next hello reports the loss
    [loss] = losses(server, "edge-1")
    assert (loss["what"], loss["count"]) == ("spooled_reports", 1)
    assert "report damaged in the spool did not parse" in loss["detail"]
