"""``plumb plan``: a fleet-wide dry run on real agents, which changes nothing anywhere.

A real server and real agents over mutual TLS on loopback. The agents run
without watchers (``--no-watch``), so a local edit stays as drift until a
run: the plan must see it, say what the push will do about it, and leave
every byte on every node as it was.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, reported, wait_for

APP = """\
name: app
target: {labels: {role: web}}
resources:
  - kind: file
    name: app-conf
    spec: {path: /etc/app.conf, content: "port=8080\\nworkers=4\\nlog=info\\n", mode: "0644"}
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "app\\n"}
"""

# The next version: app.conf changes, a file goes into a new directory, and
# motd (in sync) now requires app.conf, so what a run does to it is not known.
APP_V2 = """\
name: app
target: {labels: {role: web}}
resources:
  - kind: file
    name: app-conf
    spec: {path: /etc/app.conf, content: "port=8080\\nworkers=8\\nlog=info\\n", mode: "0644"}
  - kind: file
    name: app-dir
    spec: {path: /etc/app.d, type: directory}
  - kind: file
    name: app-extra
    spec: {path: /etc/app.d/extra.conf, content: "extra=1\\n"}
    require: [file/app-dir]
  - kind: file
    name: app-secret
    sensitive: true
    spec: {path: /etc/app.key, content: "k3y-s3cr3t\\nline two\\n", mode: "0600"}
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "app\\n"}
    require: [file/app-conf]
"""


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under ``root``: mode, mtime (ns) and bytes, to prove nothing changed."""
    found: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            body = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            found[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, body)
    return found


def planned(server: Server, *args: str) -> Any:
    result = server.cli("plan", *args, "--json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_a_plan_predicts_what_the_push_does_and_changes_nothing(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    web = [enrolled(n, role="web") for n in ("web-1", "web-2")]
    db = enrolled("db-1", role="db")
    enrolled("web-3", role="web")  # enrolled, never started: offline
    for agent in [*web, db]:
        (agent.root / "etc").mkdir()
        agent.start(3600, 0, "--no-watch")
    wait_for(lambda: all(server.nodes()[a.name]["connected"] for a in [*web, db]), what="sessions")
    app = write(tmp_path / "app.yaml", APP)
    first = json.loads(server.cli("push", "--json", str(app)).stdout)
    reported(server, first["revision"], "web-1", "web-2")
    # web-2 drifts: its mode is changed by hand, which nothing repairs until a run.
    web[1].path("/etc/app.conf").chmod(0o600)

    write(tmp_path / "app.yaml", APP_V2)
    before = {a.name: snapshot(a.root) for a in [*web, db]}
    plan = planned(server, str(app))
    after = {a.name: snapshot(a.root) for a in [*web, db]}
    assert after == before, "a plan changed something on a node"
    assert json.loads(server.cli("history", "--json").stdout)["revisions"][0]["revision"] == 1

    assert (plan["base_revision"], plan["unchanged"], plan["errors"]) == (1, False, [])
    assert plan["offline"] == ["web-3"]
    assert (plan["no_answer"], plan["refused"]) == ([], {})
    by_resource = {r["resource"]: r for r in plan["resources"]}
    assert by_resource["file/app-conf"]["changing"] == 2
    assert by_resource["file/app-conf"]["fields"] == {"content": 2, "mode": 1}
    assert by_resource["file/app-dir"]["statuses"] == {"drifted": 2}
    assert by_resource["file/app-extra"]["statuses"] == {"drifted": 2}
    # In sync now, after a change it requires: not known, never "no change".
    assert by_resource["file/motd"]["statuses"] == {"unknown": 2}
    assert by_resource["file/motd"]["changing"] == 0
    nodes = {n["node"]: {r["resource"]: r for r in n["results"]} for n in plan["nodes"]}
    assert set(nodes) == {"web-1", "web-2", "db-1"}
    assert nodes["db-1"] == {}  # not selected by app: nothing would change there
    (content,) = [c for c in nodes["web-1"]["file/app-conf"]["changes"] if c["field"] == "content"]
    assert content["diff"].splitlines()[2:] == [
        "@@ -1,3 +1,3 @@",
        " port=8080",
        "-workers=4",
        "+workers=8",
        " log=info",
    ]
    assert "s3cr3t" not in json.dumps(plan)  # sensitive: no value, no diff
    printed = server.cli("plan", str(app)).stdout
    assert "file/app-conf content: 2 nodes, mode: 1" in printed
    assert "s3cr3t" not in printed

    # The push does what the plan said, no more and no less.
    pushed = json.loads(server.cli("push", "--json", str(app)).stdout)
    reported(server, pushed["revision"], "web-1", "web-2")
    for name in ("web-1", "web-2"):
        results = server.cli_json("report", name)["results"]
        repaired = {r["id"]: {c["field"] for c in r["changes"]} for r in results if r["changes"]}
        predicted = {
            rid: {c["field"] for c in r["changes"]}
            for rid, r in nodes[name].items()
            if r["status"] == "drifted"
        }
        assert repaired == predicted
    assert web[1].path("/etc/app.conf").stat().st_mode & 0o777 == 0o644


def test_push_plan_first_pushes_only_on_yes(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1", role="web")
    (agent.root / "etc").mkdir()
    agent.start(3600, 0, "--no-watch")
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    app = str(write(tmp_path / "app.yaml", APP))
    no = server.cli("push", "--plan-first", app, check=False, answer="n\n")
    assert no.returncode == 1
    assert "file/app-conf" in no.stdout and "push: not done; nothing was stored" in no.stderr
    assert server.cli_json("history")["revisions"] == []
    assert not agent.path("/etc/app.conf").exists()
    yes = server.cli("push", "--plan-first", app, check=False, answer="y\n")
    assert yes.returncode == 0, yes.stderr
    assert "revision 1" in yes.stdout
    wait_for(lambda: agent.path("/etc/app.conf").is_file(), what="the push applied")

    # A node that is connected but does not answer in time is said to be so.
    assert agent.process is not None
    agent.process.send_signal(signal.SIGSTOP)
    try:
        silent = planned(server, app, "--wait", "1")
        printed = server.cli("plan", app, "--wait", "1").stdout
    finally:
        agent.process.send_signal(signal.SIGCONT)
    assert (silent["no_answer"], silent["nodes"], silent["offline"]) == (["web-1"], [], [])
    assert "no answer in time: web-1" in printed

    bad = write(tmp_path / "bad.yaml", APP.replace("kind: file", "kind: fiel"))
    refused = server.cli("plan", str(bad), check=False)
    assert refused.returncode == 1
    assert f"{bad}:4: resources[0].kind" in refused.stderr
    assert "Traceback" not in refused.stderr
