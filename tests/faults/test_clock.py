"""Time comes from the server's side: a skewed agent clock reorders nothing and stops nothing.

The agents run under libfaketime (only the process under test), against a
real server whose clock is right.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /etc/motd, content: "hi\\n"}}
"""


def node(server: Server, name: str) -> dict[str, object]:
    return dict(server.nodes()[name])


def offset_near(server: Server, name: str, seconds: float) -> bool:
    """Whether the server has recorded (it writes presence once a second) this offset."""
    offset = node(server, name)["clock_offset_s"]
    return isinstance(offset, float) and abs(offset - seconds) < 60


def test_a_report_from_a_fast_clock_does_not_hide_a_later_failing_run(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "motd.yaml", MOTD))
    fast = agent.run_once(clock="+2h")
    assert fast.returncode == 0, fast.stderr
    wait_for(lambda: offset_near(server, "edge-1", 7200), what="the +2 h offset recorded")
    assert "edge-1: its clock is 7200 s ahead of the server's" in server.cli("nodes").stderr

    shutil.rmtree(agent.root / "etc")  # the next run, 2 h "earlier", fails
    slow = agent.run_once()
    assert slow.returncode == 4, slow.stderr
    report = server.cli_json("report", "edge-1")
    assert (report["trigger"], [r["status"] for r in report["results"]]) == (
        "manual",
        ["failed"],
    )
    compliance = server.cli("compliance", "--json", check=False)
    assert compliance.returncode == 3
    assert json.loads(compliance.stdout)["fleet"]["counts"] == {"failed": 1}
    wait_for(lambda: offset_near(server, "edge-1", 0), what="the offset back to about 0")


def test_an_agent_a_day_behind_still_enforces_its_cached_catalog_and_says_why(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "motd.yaml", MOTD))
    assert agent.run_once().returncode == 0
    motd = agent.path("/etc/motd")
    motd.write_text("edited by hand\n")

    behind = agent.run_once(clock="-1d")
    assert behind.returncode == 0, behind.stderr
    assert motd.read_text() == "hi\n"  # repaired from the cached catalog
    assert "not valid by this host's clock" in behind.stderr
    assert "no session with server" in behind.stderr  # its TLS fails: the server's cert is "new"

    # Back on time: the report spooled a day "ago" is delivered, and ordered by
    # sequence it is not the newest one.
    caught_up = agent.run_once()
    assert caught_up.returncode == 0, caught_up.stderr
    assert server.cli("report", "edge-1").returncode == 0
    drift = server.cli_json("drift", "--node", "edge-1")["events"]
    assert [(e["resource"], e["status"]) for e in drift] == [("file/motd", "repaired")]
    assert node(server, "edge-1")["reported_revision"] == 1
