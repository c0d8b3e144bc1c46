"""What the server says about the fleet is true: liveness, delivery, catalogs, compliance.

Real server and agents over mutual TLS on loopback, driven through the
``plumb`` CLI as an operator would.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.session import DEAD_AFTER_S
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

WEB = """\
name: web
target: {labels: {role: web}}
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "managed by plumb\\n"}
  - kind: file
    name: issue
    spec: {path: /etc/issue, content: "plumb\\n"}
"""


@pytest.fixture
def frozen() -> Iterator[list[Agent]]:
    """Agents a test SIGSTOPs; they are let go again (SIGCONT) whatever happens."""
    stopped: list[Agent] = []
    try:
        yield stopped
    finally:
        for agent in stopped:
            if agent.process is not None:
                agent.process.send_signal(signal.SIGCONT)


def test_a_frozen_agent_is_no_longer_connected_and_a_push_says_so(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path, frozen: list[Agent]
) -> None:
    agent = enrolled("web-1", role="web")
    (agent.root / "etc").mkdir()
    agent.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    pushed = json.loads(server.cli("push", "--json", str(write(tmp_path / "w.yaml", WEB))).stdout)
    assert (pushed["targeted"], pushed["delivered"]) == (["web-1"], ["web-1"])
    motd = agent.path("/etc/motd")
    # Delivered is not applied: freeze only once the first catalog is on disk.
    wait_for(
        lambda: motd.is_file() and motd.read_text() == "managed by plumb\n", what="the first apply"
    )

    assert agent.process is not None
    agent.process.send_signal(signal.SIGSTOP)
    frozen.append(agent)
    started = time.monotonic()
    wait_for(
        lambda: not server.nodes()["web-1"]["connected"],
        timeout=DEAD_AFTER_S + 10,
        what="the frozen agent to be seen as disconnected",
    )
    noticed_s = time.monotonic() - started
    assert noticed_s <= DEAD_AFTER_S + 5, noticed_s

    changed = write(tmp_path / "w.yaml", WEB.replace("managed by plumb", "changed"))
    result = server.cli("push", "--json", "--wait", "1", str(changed))
    pushed = json.loads(result.stdout)
    assert (pushed["targeted"], pushed["delivered"], pushed["undelivered"]) == (
        ["web-1"],
        [],
        ["web-1"],
    )

    agent.process.send_signal(signal.SIGCONT)
    frozen.remove(agent)
    wait_for(lambda: motd.read_text() == "changed\n", what="the thawed agent to catch up")
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the agent back")


LATE = """\
name: late
target: {names: [web-9]}
resources:
  - kind: file
    name: greeting
    spec: {path: /etc/motd, content: "welcome\\n"}
"""


def test_a_collision_only_a_later_node_makes_shows_in_nodes_report_and_compliance(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    enrolled("web-1", role="web")
    result = server.push(write(tmp_path / "web.yaml", WEB), write(tmp_path / "late.yaml", LATE))
    assert result.returncode == 0, result.stderr
    assert "no enrolled node is named 'web-9'" in result.stderr

    enrolled("web-9", role="web")  # web.yaml and late.yaml both manage its /etc/motd
    problem = server.nodes()["web-9"]["catalog_problem"]
    # Files are named as the operator named them: here, full paths.
    assert f"path /etc/motd is managed by both file/motd ({tmp_path}/web.yaml:" in problem
    assert f"and file/greeting ({tmp_path}/late.yaml:4)" in problem
    assert server.nodes()["web-1"]["catalog_problem"] is None

    table = server.cli("nodes")
    assert "no catalog" in table.stdout
    assert "web-9: no catalog at revision 1:" in table.stderr

    report = server.cli("report", "web-9", check=False)
    assert report.returncode == 1
    assert "node web-9 has no catalog at revision 1" in report.stderr
    assert "path /etc/motd is managed by both" in report.stderr

    compliance = server.cli("compliance", "--json", check=False)
    assert compliance.returncode == 3
    rows = {(r["scope"], r["name"]): r for r in json.loads(compliance.stdout)["rows"]}
    assert rows[("node", "web-9")]["counts"] == {"no_catalog": 3}


def test_a_node_that_never_reported_makes_the_fleet_not_compliant(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    up = enrolled("web-1", role="web")
    enrolled("web-2", role="web")  # enrolled, never started
    (up.root / "etc").mkdir()
    up.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    server.cli("push", str(write(tmp_path / "web.yaml", WEB)))
    wait_for(lambda: server.nodes()["web-1"]["reported_revision"] == 1, what="web-1's report")

    result = server.cli("compliance", "--json", check=False)
    assert result.returncode == 3
    shape = json.loads(result.stdout)
    assert shape["revision"] == 1
    assert shape["fleet"] == {
        "scope": "fleet",
        "name": "fleet",
        "compliant": 2,
        "expected": 4,
        "percent": 50.0,
        "percent_with_waivers": 50.0,
        "counts": {"repaired": 2, "pending": 2},
    }
    table = server.cli("compliance", check=False).stdout
    assert "2/4" in table and "pending 2" in table


def test_an_identical_push_makes_no_new_revision(server: Server, tmp_path: Path) -> None:
    web = write(tmp_path / "web.yaml", WEB)
    first = json.loads(server.cli("push", "--json", str(web)).stdout)
    again = server.cli("push", str(web))
    assert again.returncode == 0
    assert "revision 1 unchanged" in again.stdout
    shape = json.loads(server.cli("push", "--json", str(web)).stdout)
    assert (first["revision"], shape["revision"], shape["unchanged"]) == (1, 1, True)


MOTD = """\
name: motd
target: {labels: {role: web}}
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "managed by plumb\\n"}
"""


class Fighter:
    """Another tool that keeps writing its own version of a file the agent manages."""

    def __init__(self, path: Path, content: str) -> None:
        self.path = path
        self.content = content
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fight, daemon=True)

    def __enter__(self) -> Fighter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _fight(self) -> None:
        # It polls, as a cron job or a rival agent would: its pace is its own.
        while not self._stop.wait(0.05):
            if self.path.read_text() != self.content:
                self.path.write_text(self.content)
                self.writes += 1


def test_a_resource_fought_over_is_held_and_reported_as_flapping(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1", role="web")
    (agent.root / "etc").mkdir()
    agent.start(3600, 0, "--flap-repairs", "3", "--flap-window", "120", "--flap-backoff", "600")
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    server.cli("push", str(write(tmp_path / "motd.yaml", MOTD)))
    motd = agent.path("/etc/motd")
    wait_for(lambda: motd.exists() and motd.read_text() == "managed by plumb\n", what="converged")

    def flapping() -> str:
        report = server.cli_json("report", "web-1")
        [result] = report["results"]
        return str(result["error"] or "") if result["status"] == "failed" else ""

    with Fighter(motd, "someone else's\n") as fighter:
        reason = wait_for(flapping, timeout=30, what="the resource to be held as flapping")
        assert reason.startswith("flapping: repaired 4 times in 2 minutes; not repaired again")
    assert fighter.writes >= 4

    def repairs() -> int:
        events = server.cli_json("drift", "--node", "web-1")["events"]
        return sum(1 for e in events if e["status"] == "repaired")

    assert repairs() == 4
    # Held across processes too: a manual run leaves it alone and says why.
    once = agent.run_once()
    assert once.returncode == 4, once.stderr
    assert motd.read_text() == "someone else's\n"
    assert repairs() == 4
    assert server.cli("compliance", check=False).returncode == 3
