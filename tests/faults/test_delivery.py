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

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.figures import assert_nothing_lost, figures, produced, stored
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
