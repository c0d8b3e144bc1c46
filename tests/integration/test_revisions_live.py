"""Manifests over time on a real fleet: list, remove, purge, history, diff, rollback, labels.

A real server and real agents over mutual TLS on loopback, driven through
the ``plumb`` CLI as an operator would; what the agents do is checked on
their (temporary) root directories.
"""

from __future__ import annotations

import json
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
    name: app-dir
    spec: {path: /srv/app, type: directory}
  - kind: file
    name: app-conf
    spec: {path: /srv/app/app.conf, content: "port=8080\\n"}
    require: [file/app-dir]
"""

BASE = """\
name: base
target: all
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "v1\\n"}
  - kind: file
    name: token
    sensitive: true
    spec: {path: /etc/token, content: "s3cr3t-token\\n", mode: "0600"}
"""


def started(agent: Agent, server: Server) -> Agent:
    (agent.root / "etc").mkdir(exist_ok=True)
    (agent.root / "srv").mkdir(exist_ok=True)
    agent.start()
    wait_for(lambda: server.nodes()[agent.name]["connected"], what=f"{agent.name}'s session")
    return agent


def pushed(server: Server, *args: str) -> Any:
    result = server.cli(*args, "--json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def operator_name(server: Server) -> str:
    (only,) = server.cli_json("operator", "list")["operators"]
    return str(only["name"])


def test_manifest_rm_leaves_objects_and_purge_removes_them(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = [started(enrolled(n, role="web"), server) for n in ("web-1", "web-2")]
    app = write(tmp_path / "app.yaml", APP)
    first = pushed(server, "push", str(app), "-m", "app, first cut")
    reported(server, first["revision"], "web-1", "web-2")
    for agent in agents:
        assert agent.path("/srv/app/app.conf").read_text() == "port=8080\n"

    listed = server.cli_json("manifests")
    assert listed["revision"] == first["revision"]
    assert listed["manifests"] == [
        {
            "name": "app",
            "file": str(app),
            "target": "role=web",
            "mode": "enforce",
            "resources": 2,
            "nodes": ["web-1", "web-2"],
            "changed_in": first["revision"],
            "changed_at": listed["manifests"][0]["changed_at"],
            "author": operator_name(server),
        }
    ]

    # Without --purge: no longer managed, left as it is.
    removed = pushed(server, "manifest", "rm", "app", "-m", "hand app to the app team")
    assert removed["released"] == {
        "file/app-conf": ["web-1", "web-2"],
        "file/app-dir": ["web-1", "web-2"],
    }
    assert removed["purging"] == {}
    reported(server, removed["revision"], "web-1", "web-2")
    assert server.cli_json("manifests")["manifests"] == []
    for agent in agents:
        assert agent.path("/srv/app/app.conf").read_text() == "port=8080\n"
        # No longer managed means no longer enforced: a local edit stays.
        agent.path("/srv/app/app.conf").write_text("port=9090\n")

    # Pushed again it owns them again; then --purge removes them, the file
    # before its directory.
    again = pushed(server, "push", str(app))
    reported(server, again["revision"], "web-1", "web-2")
    for agent in agents:
        assert agent.path("/srv/app/app.conf").read_text() == "port=8080\n"
    # A purge shows its plan first, and asks.
    asked = server.cli("manifest", "rm", "app", "--purge", check=False, answer="n\n")
    assert asked.returncode == 1, asked.stdout + asked.stderr
    assert "file/app-conf: would change\n    state: present -> absent" in asked.stdout
    assert "manifest rm: not done; nothing was stored" in asked.stderr
    assert agents[0].path("/srv/app/app.conf").is_file()
    purge = pushed(server, "manifest", "rm", "app", "--purge", "--yes")
    assert purge["purging"] == {
        "file/app-conf": ["web-1", "web-2"],
        "file/app-dir": ["web-1", "web-2"],
    }
    reported(server, purge["revision"], "web-1", "web-2")
    for agent in agents:
        assert not agent.path("/srv/app").exists()
        assert agent.path("/srv").is_dir()  # only what it managed
    assert server.cli_json("manifests")["purging"] == ["app"]
    history = server.cli_json("history")["revisions"]
    assert [(r["origin"], r["added"], r["removed"], r["purged"]) for r in history] == [
        ("remove", [], [], ["app"]),
        ("push", ["app"], [], []),
        ("remove", [], ["app"], []),
        ("push", ["app"], [], []),
    ]
    assert history[2]["message"] == "hand app to the app team"

    # Unknown names are refused whole, in one line.
    missing = server.cli("manifest", "rm", "nope", check=False)
    assert missing.returncode == 1
    assert "no manifest is named 'nope'" in missing.stderr


def test_history_diff_and_rollback_restore_the_old_content_everywhere(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = [started(enrolled(n), server) for n in ("web-1", "db-1")]
    base = write(tmp_path / "base.yaml", BASE)
    v1 = pushed(server, "push", str(base), "-m", "v1")
    write(tmp_path / "base.yaml", BASE.replace("v1", "v2").replace("s3cr3t", "n3w-s3cr3t"))
    v2 = pushed(server, "push", str(base), "-m", "v2")
    reported(server, v2["revision"], "web-1", "db-1")
    for agent in agents:
        assert agent.path("/etc/motd").read_text() == "v2\n"

    history = server.cli_json("history", "base")["revisions"]
    assert [(r["revision"], r["message"], r["changed"], r["added"]) for r in history] == [
        (v2["revision"], "v2", ["base"], []),
        (v1["revision"], "v1", [], ["base"]),
    ]
    assert {r["author"] for r in history} == {operator_name(server)}
    assert history[0]["content_sha256"] != history[1]["content_sha256"]

    diff = server.cli_json("diff", str(v1["revision"]))
    assert diff["new"] == v2["revision"]
    (text,) = diff["manifests"]
    assert (text["name"], text["change"]) == ("base", "changed")
    assert '-    spec: {path: /etc/motd, content: "v1\\n"}' in text["diff"]
    assert '+    spec: {path: /etc/motd, content: "v2\\n"}' in text["diff"]
    assert {
        (r["resource"], r["change"], tuple(r["fields"]), tuple(r["nodes"]))
        for r in diff["resources"]
    } == {
        ("file/motd", "changed", ("content",), ("db-1", "web-1")),
        ("file/token", "changed", ("content",), ("db-1", "web-1")),
    }
    printed = server.cli("diff", str(v1["revision"]), str(v2["revision"])).stdout
    assert "s3cr3t" not in json.dumps(diff) + printed  # sensitive: redacted, old and new
    assert "changed file/motd (content): 2 node(s): db-1, web-1" in printed

    back = pushed(server, "rollback", "--to", str(v1["revision"]), "-m", "v2 broke it")
    assert sorted(back["targeted"]) == ["db-1", "web-1"]
    reported(server, back["revision"], "web-1", "db-1")
    for agent in agents:
        assert agent.path("/etc/motd").read_text() == "v1\n"
        assert agent.path("/etc/token").read_text() == "s3cr3t-token\n"
    newest, _, first = server.cli_json("history")["revisions"]
    assert (newest["origin"], newest["message"]) == ("rollback", "v2 broke it")
    # The same desired state as revision 1: the same content hash, whoever made it.
    assert newest["content_sha256"] == first["content_sha256"]
    same = server.cli("diff", str(v1["revision"]), str(back["revision"])).stdout
    assert "no manifest differs" in same

    too_far = server.cli("rollback", "--to", "99", check=False)
    assert (too_far.returncode, "there is no revision 99" in too_far.stderr) == (1, True)
    no_diff = server.cli("diff", "99", check=False)
    assert (no_diff.returncode, "there is no revision 99" in no_diff.stderr) == (1, True)


DB = """\
name: db
target: "role=db"
resources:
  - kind: file
    name: db-conf
    spec: {path: /etc/db.conf, content: "db\\n"}
"""

WEB = """\
name: web
target: "role=web"
resources:
  - kind: file
    name: web-conf
    spec: {path: /etc/web.conf, content: "web\\n"}
"""


def test_a_label_moves_a_node_in_and_out_online_and_offline(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = started(enrolled("node-1"), server)
    files = [write(tmp_path / "db.yaml", DB), write(tmp_path / "web.yaml", WEB)]
    result = server.cli("push", *map(str, files))
    for name in ("db", "web"):
        assert f"manifest {name!r}: its target selects no enrolled node" in result.stderr
    assert server.cli_json("nodes", "--target", "role=web")["nodes"] == []

    labelled = server.cli_json("label", "node-1", "role=web", "tier=1")
    assert labelled == {
        "node": "node-1",
        "labels": {"role": "web", "tier": "1"},
        "matched_before": [],
        "matched_after": ["web"],
        "revision": 1,
        "delivered": True,
        "refused": None,
        "catalog_problem": None,
    }
    wait_for(lambda: agent.path("/etc/web.conf").is_file(), what="the web manifest applied")
    assert [n["name"] for n in server.cli_json("nodes", "--target", "role=web")["nodes"]] == [
        "node-1"
    ]
    # A label that selects nothing new changes no catalog.
    same = server.cli_json("label", "node-1", "tier=2")
    assert (same["matched_after"], same["revision"]) == (["web"], None)

    # Relabelled while it is offline: at the same revision, a catalog it has
    # not got; it gets it when it connects.
    agent.stop()
    wait_for(lambda: not server.nodes()["node-1"]["connected"], what="the session to end")
    offline = server.cli_json("label", "node-1", "role=db")
    assert (offline["matched_after"], offline["delivered"]) == (["db"], False)
    agent.start()
    wait_for(lambda: agent.path("/etc/db.conf").is_file(), what="the db manifest applied")
    assert agent.path("/etc/web.conf").read_text() == "web\n"  # released, left as it is

    refused = server.cli("label", "node-1", "os.family=bsd", check=False)
    assert refused.returncode == 1
    assert "label 'os.family': os.family is a node's fact" in refused.stderr
    unknown = server.cli("label", "node-9", "role=db", check=False)
    assert (unknown.returncode, "no node named 'node-9'" in unknown.stderr) == (1, True)
    bad = server.cli("nodes", "--target", "role in (web", check=False)
    assert (bad.returncode, "cannot read it at column" in bad.stderr) == (1, True)
    assert "Traceback" not in refused.stderr + unknown.stderr + bad.stderr


def test_targets_select_by_fact_and_name(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = [started(enrolled(n), server) for n in ("a-1", "a-2")]
    facts = server.nodes()["a-1"]["facts"]
    assert facts["os.family"] == "debian" and facts["arch"]  # Debian, here and in CI
    by_fact = write(
        tmp_path / "f.yaml",
        f"""\
name: by-fact
target: "os.family=debian,arch={facts["arch"]},name notin (a-2)"
resources:
  - kind: file
    name: f
    spec: {{path: /etc/f, content: "f\\n"}}
""",
    )
    done = pushed(server, "push", str(by_fact))
    assert done["targeted"] == ["a-1"]
    reported(server, done["revision"], "a-1")
    assert agents[0].path("/etc/f").is_file()
    assert not agents[1].path("/etc/f").exists()
    selected = server.cli_json("nodes", "--target", f"arch={facts['arch']},name in (a-2)")
    assert [n["name"] for n in selected["nodes"]] == ["a-2"]
