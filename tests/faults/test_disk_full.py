"""A full state dir stops neither repairs nor their reports, and the agent recovers by itself.

The agent's state dir (/var/lib/plumb) is put on a tmpfs of its own, which
the test fills to the last byte while a real daemon runs against a real
server. Drift is still repaired and every repair still reaches the server:
straight away while the server is reachable, from a small in-memory backlog
once it is back otherwise. A catalog pushed meanwhile is applied from
memory. The node shows the condition in ``plumb nodes`` and ``plumb-agent
status`` still works. When space returns the condition clears by itself and
what waited in memory is written (the pushed catalog is cached). The last
test prints the figures of tests/faults/test_delivery.py for a full state
dir under runs every second, and how long the condition took to clear.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.figures import assert_nothing_lost, figures, stored
from tests.fullfs import fill, on_its_own_tmpfs
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /etc/motd, content: "hi\\n"}}
"""
CONDITION = "state_dir_unwritable"


def conditions(server: Server) -> list[dict[str, Any]]:
    return list(server.nodes()["edge-1"]["conditions"])


def repairs(server: Server) -> list[dict[str, Any]]:
    events = server.cli_json("drift", "--node", "edge-1", "--json")["events"]
    return [e for e in events if e["resource"] == "file/motd" and e["status"] == "repaired"]


@pytest.fixture
def full(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> Iterator[tuple[Agent, Path]]:
    """Agent edge-1, its state dir on a tmpfs of its own, MOTD pushed (not started yet)."""
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "motd.yaml", MOTD))
    with on_its_own_tmpfs(agent.state_dir) as filler:
        try:
            yield agent, filler
        finally:
            agent.stop()


def start(agent: Agent, server: Server, interval: float = 3600) -> Path:
    """Start the daemon and wait for its first apply, reported; /etc/motd's path."""
    agent.start(interval)
    motd = agent.path("/etc/motd")
    wait_for(lambda: motd.is_file() and motd.read_text() == "hi\n", what="the first apply")
    wait_for(lambda: stored(server), what="the first report")
    return motd


def test_a_full_state_dir_still_repairs_and_reports_and_recovers(
    server: Server, full: tuple[Agent, Path], tmp_path: Path
) -> None:
    agent, filler = full
    motd = start(agent, server)
    assert conditions(server) == []

    fill(filler)
    for round_ in range(3):
        motd.write_text(f"tampered {round_}\n")
        wait_for(lambda: motd.read_text() == "hi\n", what=f"repair {round_} on a full state dir")
        wait_for(lambda n=round_: len(repairs(server)) == n + 1, what=f"repair {round_} reported")

    shown = wait_for(lambda: conditions(server), what="the node's condition")
    assert [c["name"] for c in shown] == [CONDITION], shown
    assert "its file system is full" in shown[0]["detail"], shown
    notes = server.cli("nodes").stderr
    assert f"edge-1: state dir {agent.state_dir} cannot be written" in notes, notes
    status = subprocess.run(
        agent._cmd("status", "--json"), capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in status.stderr, status.stderr

    changed = write(tmp_path / "motd.yaml", MOTD.replace("hi\\n", "changed\\n"))
    pushed = json.loads(server.cli("push", "--json", "--wait", "10", str(changed)).stdout)
    assert pushed["delivered"] == ["edge-1"], pushed
    wait_for(lambda: motd.read_text() == "changed\n", what="the push applied from memory")
    assert "Exception iterating requests" not in agent.logs()
    assert agent.status()["catalog_revision"] == 1  # only in memory so far

    filler.unlink()
    wait_for(lambda: conditions(server) == [], timeout=30, what="the condition to clear")
    wait_for(lambda: agent.status()["catalog_revision"] == 2, what="the push to be cached")
    wait_for(lambda: agent.status()["spooled_reports"] == 0, what="the backlog to drain")
    numbers = stored(server)
    assert numbers == list(range(1, numbers[-1] + 1)), numbers  # none lost, none twice
    assert "Traceback" not in agent.logs()


def test_while_the_server_is_away_repairs_wait_in_memory(
    server: Server, full: tuple[Agent, Path]
) -> None:
    agent, filler = full
    motd = start(agent, server)

    server.stop()
    fill(filler)
    for round_ in range(2):
        motd.write_text(f"tampered {round_}\n")
        wait_for(lambda: motd.read_text() == "hi\n", what=f"repair {round_} without the server")
    server.start()

    wait_for(lambda: len(repairs(server)) == 2, timeout=60, what="both repairs, from memory")
    numbers = stored(server)
    assert numbers == list(range(1, numbers[-1] + 1)), numbers
    filler.unlink()
    wait_for(lambda: conditions(server) == [], timeout=30, what="the condition to clear")


def test_figures_for_a_state_dir_full_for_a_while(server: Server, full: tuple[Agent, Path]) -> None:
    agent, filler = full
    start(agent, server, interval=1.0)

    fill(filler)
    before = len(stored(server))
    wait_for(lambda: len(stored(server)) > before + 2, what="runs reported while it is full")
    filler.unlink()
    freed = time.monotonic()
    assert_nothing_lost(figures("state dir full", server, agent))
    wait_for(lambda: conditions(server) == [], timeout=30, what="the condition to clear")
    print(json.dumps({"fault": "state dir full", "cleared_s": round(time.monotonic() - freed, 2)}))
