"""An agent that inotify will not serve polls instead, says so, and still repairs drift.

The daemon runs in a user namespace of its own whose inotify watch limit is
0 (the limits are per user namespace: the machine's are untouched), against
a real server. Its node shows the condition ``watch_polling`` naming the
path; an out-of-band change is repaired by a watch run all the same; once
the limit is raised the agent watches through inotify again and the
condition clears.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for

MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /etc/motd, content: "hi\\n"}}
"""


def conditions(server: Server) -> list[dict[str, Any]]:
    return list(server.nodes()["edge-1"]["conditions"])


def test_a_node_without_inotify_watches_polls_says_so_and_repairs(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "motd.yaml", MOTD))
    agent.start(inotify_watches=0)
    motd = agent.path("/etc/motd")
    wait_for(lambda: motd.is_file() and motd.read_text() == "hi\n", what="the first apply")

    [polling] = wait_for(lambda: conditions(server), what="the node's condition")
    assert polling["name"] == "watch_polling", polling
    assert f"polling {motd} every 2 s" in polling["detail"], polling
    assert "max_user_watches" in polling["detail"], polling
    notes = server.cli("nodes").stderr
    assert f"edge-1: file: polling {motd}" in notes, notes

    motd.write_text("tampered\n")
    wait_for(lambda: motd.read_text() == "hi\n", what="a repair found by polling")
    report = server.cli_json("report", "edge-1", "--json")
    assert report["trigger"] == "watch", report

    agent.set_inotify_watches(100)
    wait_for(lambda: conditions(server) == [], what="the condition to clear")
