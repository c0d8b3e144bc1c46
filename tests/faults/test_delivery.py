"""Nothing lost, nothing duplicated, nothing reordered, whatever fails, and how fast it recovers.

A real agent daemon runs every second against a real server while one
fault at a time is injected: the agent killed with SIGKILL (three times),
the server killed with SIGKILL, the server stopped for a while, the agent's
clock two hours fast. Every report carries its node's sequence number, so
the figures follow from what the server stored: a number missing from
1..N is a lost report, a number stored twice a duplicate, and the node's
status must come from its highest number (an older report folded last would
be a reorder). Each test prints its figures as one JSON line (pytest -s).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /etc/motd, content: "hi\\n"}}
"""
RUN_EVERY_S = 1.0
FAULT_S = 3.0


@pytest.fixture
def running(server: Server, enrolled: Callable[..., Agent], tmp_path: Path) -> Iterator[Agent]:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "motd.yaml", MOTD))
    agent.start(RUN_EVERY_S)
    wait_for(lambda: stored(server), what="the first report")
    yield agent


def stored(server: Server) -> list[int]:
    """The sequence numbers of every report the server stored for the node."""
    with sqlite3.connect(f"file:{server.data_dir / 'plumb.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT sequence FROM reports WHERE node = 'edge-1'").fetchall()
    return sorted(int(row[0]) for row in rows)


def produced(agent: Agent) -> int:
    """The highest sequence the agent has given a report (its spool's counter)."""
    with sqlite3.connect(f"file:{agent.state_dir / 'spool.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'next_sequence'").fetchone()
    return int(row[0]) - 1


def folded(server: Server) -> int:
    with sqlite3.connect(f"file:{server.data_dir / 'plumb.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT status_sequence FROM nodes WHERE name = 'edge-1'").fetchone()
    return int(row[0])


def figures(fault: str, server: Server, agent: Agent) -> dict[str, object]:
    """Wait until the agent's reports since the fault ended are stored; what the fault did.

    Recovery is timed from the end of the fault until a report made after it
    is stored, with everything before it, and is the node's status.
    """
    fault_over, made_before = time.monotonic(), produced(agent)

    def caught_up() -> bool:
        numbers = stored(server)
        newest = max(produced(agent), made_before + 1)
        return bool(numbers) and numbers[-1] >= newest and folded(server) == numbers[-1]

    wait_for(caught_up, timeout=60, what="every report stored after the fault")
    recovered_s = time.monotonic() - fault_over
    numbers = stored(server)
    result = {
        "fault": fault,
        "reports": len(set(numbers)),
        "lost": len(set(range(1, numbers[-1] + 1)) - set(numbers)),
        "duplicated": len(numbers) - len(set(numbers)),
        "reordered": int(folded(server) != numbers[-1]),
        "recovered_s": round(recovered_s, 2),
    }
    print(json.dumps(result))
    return result


def assert_nothing_lost(result: dict[str, object]) -> None:
    assert (result["lost"], result["duplicated"], result["reordered"]) == (0, 0, 0), result


def test_agent_killed_three_times(server: Server, running: Agent) -> None:
    for _ in range(3):
        before = produced(running)
        wait_for(lambda b=before: produced(running) > b, what="another run")  # mid-stream
        running.kill()
        running.start(RUN_EVERY_S)
    assert_nothing_lost(figures("agent kill -9 x3", server, running))


def test_server_killed(server: Server, running: Agent) -> None:
    server.kill()
    before = produced(running)
    wait_for(lambda: produced(running) > before + 1, what="runs spooled while it is down")
    server.start()
    assert_nothing_lost(figures("server kill -9", server, running))


def test_server_stopped_for_a_while(server: Server, running: Agent) -> None:
    server.stop()
    deadline = time.monotonic() + FAULT_S
    wait_for(lambda: time.monotonic() > deadline, what="the outage")  # the fault's length
    server.start()
    assert_nothing_lost(figures(f"server outage {FAULT_S:g} s", server, running))


def test_agent_clock_two_hours_fast_then_right(server: Server, running: Agent) -> None:
    running.stop()
    running.start(RUN_EVERY_S, clock="+2h")
    before = produced(running)
    wait_for(lambda: produced(running) > before + 1, what="runs with the fast clock")
    running.stop()
    running.start(RUN_EVERY_S)  # back to the right time: "2 h earlier"
    before = produced(running)
    wait_for(lambda: produced(running) > before + 1, what="runs with the right clock")
    assert_nothing_lost(figures("agent clock +2 h, then right", server, running))
