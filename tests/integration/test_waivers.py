"""Waivers, scopes and evidence exports on a real fleet (waived until expiry, at once).

A real server and agent over mutual TLS, through the ``plumb`` CLI.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, reported, wait_for

# /srv/app does not exist on the node: this resource fails there, every run.
APP = """\
name: app
target: all
resources:
  - kind: file
    name: app-conf
    spec: {path: /srv/app/app.conf, content: "x\\n"}
    controls: [CIS-9.9]
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "ok\\n"}
    controls: [CIS-1.1]
"""


def compliance(server: Server) -> tuple[int, dict[str, Any]]:
    """The exit code and the fleet row, with in_sync and repaired counted as one."""
    result = server.cli("compliance", "--json", check=False)
    fleet: dict[str, Any] = json.loads(result.stdout)["fleet"]
    counts = dict(fleet["counts"])
    good = counts.pop("in_sync", 0) + counts.pop("repaired", 0)
    fleet["counts"] = {"compliant": good, **counts} if good else counts
    return result.returncode, fleet


def test_a_waiver_accepts_a_failure_until_it_expires(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    agent.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    pushed = server.cli_json("push", str(write(tmp_path / "app.yaml", APP)))
    reported(server, pushed["revision"], "web-1")
    code, fleet = compliance(server)
    assert (code, fleet["counts"], fleet["percent"]) == (3, {"compliant": 1, "failed": 1}, 50.0)

    refused = server.cli(
        "waiver", "add", "--control", "CIS-0", "--reason", "x", "--expires", "1d", check=False
    )
    assert refused.returncode == 1
    assert "no resource of revision 1 has the control 'CIS-0'" in refused.stderr
    assert "Traceback" not in refused.stderr

    added = server.cli_json(
        "waiver", "add", "--control", "CIS-9.9", "--reason", "app not on this host yet",
        "--expires", "4s",
    )  # fmt: skip
    (operator,) = server.cli_json("operator", "list")["operators"]
    assert (added["approver"], added["state"], added["control"]) == (
        operator["name"],
        "active",
        "CIS-9.9",
    )
    code, fleet = compliance(server)
    assert (code, fleet["counts"]) == (0, {"compliant": 1, "waived": 1})
    assert (fleet["percent"], fleet["percent_with_waivers"]) == (50.0, 100.0)
    assert "WITH WAIVERS" in server.cli("compliance").stdout
    assert [w["id"] for w in server.cli_json("waiver", "list")["waivers"]] == [added["id"]]

    # Expired: a failure again at once, with nothing else happening on the node.
    wait_for(lambda: time.time() >= added["expires_at"], timeout=10, what="the expiry")
    code, fleet = compliance(server)
    assert (code, fleet["counts"]) == (3, {"compliant": 1, "failed": 1})
    assert server.cli_json("waiver", "list")["waivers"] == []
    (old,) = server.cli_json("waiver", "list", "--all")["waivers"]
    assert old["state"] == "expired"

    # Revoked: the same, and it stays listed as evidence.
    again = server.cli_json(
        "waiver", "add", "--resource", "file/app-conf", "--reason", "r", "--expires", "1d"
    )
    assert compliance(server)[0] == 0
    revoked = server.cli_json("waiver", "revoke", str(again["id"]))
    assert revoked["state"] == "revoked"
    assert compliance(server)[0] == 3
    assert {w["state"] for w in server.cli_json("waiver", "list", "--all")["waivers"]} == {
        "expired",
        "revoked",
    }


def test_compliance_by_one_scope_and_for_the_nodes_a_selector_picks(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = [enrolled("web-1", role="web"), enrolled("db-1", role="db")]
    for agent in agents:
        (agent.root / "etc").mkdir()
        agent.start()
    wait_for(lambda: all(n["connected"] for n in server.nodes().values()), what="sessions")
    pushed = server.cli_json("push", str(write(tmp_path / "app.yaml", APP)))
    reported(server, pushed["revision"], "web-1", "db-1")

    whole = json.loads(server.cli("compliance", "--json", check=False).stdout)
    assert {r["scope"] for r in whole["rows"]} == {"node", "manifest", "control", "kind"}
    assert whole["fleet"]["expected"] == 4
    mine = json.loads(
        server.cli(
            "compliance", "--by", "node", "--target", "role=db", "--json", check=False
        ).stdout
    )
    assert [(r["scope"], r["name"]) for r in mine["rows"]] == [("node", "db-1")]
    assert mine["fleet"]["expected"] == 2
    bad = server.cli("compliance", "--target", "role in (db", check=False)
    assert (bad.returncode, "cannot read it at column" in bad.stderr) == (1, True)


def chromium_dom(page: Path) -> str:
    """What a real browser makes of ``page``, opened with no network at all."""
    result = subprocess.run(
        [
            "unshare",
            "--net",  # no network: a page that fetched anything could not show it
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={page.parent / 'chromium-profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_evidence_exports_say_what_produced_them_and_open_offline(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    agent.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    pushed = server.cli_json("push", str(write(tmp_path / "app.yaml", APP)))
    reported(server, pushed["revision"], "web-1")
    agent.path("/etc/motd").write_text("edited\n")  # one drift event, repaired
    wait_for(lambda: server.cli_json("drift")["events"], what="the drift event")

    page = tmp_path / "report.html"
    exported = server.cli("compliance", "--format", "html", check=False)
    assert exported.returncode == 3  # not fully compliant, as the table would say
    page.write_text(exported.stdout)
    assert "http://" not in exported.stdout.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in exported.stdout and "<script" not in exported.stdout
    dom = chromium_dom(page)
    assert "Compliance at revision 1" in dom
    assert "plumb compliance --format html" in dom  # the query that produced it
    assert "1 of 2 expected resources compliant" in dom
    assert 'data-control="CIS-1.1"' in dom and 'data-control="CIS-9.9"' in dom
    assert "file/motd" in dom and "edited" in dom  # the drift timeline

    table = server.cli("compliance", "--format", "csv", check=False).stdout.splitlines()
    assert table[0] == "# plumb compliance at revision 1, " + table[0].split(", ", 1)[1]
    assert table[1] == "# query: plumb compliance --format csv"
    header, *rows = table[2:]
    assert header.startswith("scope,name,compliant,expected,percent,percent_with_waivers")
    fleet = dict(zip(header.split(","), rows[-1].split(","), strict=True))
    assert (fleet["scope"], fleet["compliant"], fleet["expected"], fleet["failed"]) == (
        "fleet",
        "1",
        "2",
        "1",
    )

    junit = ElementTree.fromstring(
        server.cli("compliance", "--format", "junit", check=False).stdout
    )
    suites = {s.get("name"): s for s in junit.iter("testsuite")}
    assert suites["control CIS-9.9"].get("failures") == "1"
    assert suites["control CIS-1.1"].get("failures") == "0"
