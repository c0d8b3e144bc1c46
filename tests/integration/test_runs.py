"""A node's run history: every run it reported, and any one of them in full.

A real server and agent over mutual TLS. The complaint this answers: a
push's changes were overwritten, as "the last run", by a watcher's run a
moment later; both runs must stay readable.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, reported, wait_for

MOTD = """\
name: motd
target: all
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "managed\\nby plumb\\n"}
    controls: [CIS-1.7.1]
  - kind: file
    name: token
    sensitive: true
    spec: {path: /etc/token, content: "s3cr3t\\nline two\\n"}
"""


def test_every_run_stays_readable_after_later_ones(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    agent.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    pushed = server.cli_json("push", str(write(tmp_path / "motd.yaml", MOTD)))
    reported(server, pushed["revision"], "web-1")
    motd = agent.path("/etc/motd")
    motd.write_text("managed\nby hand\n")  # the watcher sees it and repairs it

    def two_runs() -> list[dict[str, object]] | None:
        runs = server.cli_json("runs", "web-1")["runs"]
        return runs if len(runs) >= 2 else None

    runs = wait_for(two_runs, what="the watcher's run")
    watch, push = runs[0], runs[-1]
    assert (watch["trigger"], push["trigger"]) == ("watch", "push")
    assert (watch["counts"], push["counts"]) == (
        {"in_sync": 1, "repaired": 1},
        {"repaired": 2},
    )
    assert watch["finished_at"] >= push["finished_at"]
    assert motd.read_text() == "managed\nby plumb\n"

    # The push's own changes, though a later run is the node's last one.
    first = server.cli_json("report", "web-1", "--run", str(push["id"]))
    result = first["results"][0]
    assert (first["trigger"], result["changes"][0]["field"]) == ("push", "state")
    assert result["changes"][0]["observed"] == "absent"
    last = server.cli_json("report", "web-1")
    assert last["id"] == watch["id"]
    (content,) = last["results"][0]["changes"]
    assert content["diff"].splitlines()[2:] == [
        "@@ -1,2 +1,2 @@",
        " managed",
        "-by hand",
        "+by plumb",
    ]

    # Drift shows what changed, line by line; never for a secret.
    agent.path("/etc/token").write_text("s3cr3t\nchanged\n")
    wait_for(
        lambda: any(e["resource"] == "file/token" for e in server.cli_json("drift")["events"]),
        what="the secret's drift",
    )
    events = {e["resource"]: e for e in server.cli_json("drift")["events"]}
    assert events["file/motd"]["changes"][0]["diff"] == content["diff"]
    assert events["file/token"]["changes"][0]["diff"] is None
    printed = server.cli("drift").stdout
    assert "  -by hand\n  +by plumb" in printed
    assert "s3cr3t" not in printed + json.dumps(events)


AUDITED = """\
name: audited
target: all
resources:
  - kind: file
    name: issue
    mode: audit
    spec: {path: /etc/issue, content: "welcome\\n"}
    controls: [CIS-1.7.2]
"""


def test_drift_is_asked_for_by_kind_manifest_control_time_and_repair(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    agent.path("/etc/issue").write_text("welcome\n")  # in sync from the start
    agent.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    files = [write(tmp_path / "motd.yaml", MOTD), write(tmp_path / "audited.yaml", AUDITED)]
    pushed = server.cli_json("push", *map(str, files))
    reported(server, pushed["revision"], "web-1")
    agent.path("/etc/motd").write_text("managed\nby hand\n")  # repaired by the watcher
    agent.path("/etc/issue").write_text("hacked\n")  # audit: only recorded

    def both() -> dict[str, str] | None:
        found = {e["resource"]: e["status"] for e in server.cli_json("drift")["events"]}
        return found if {"file/motd", "file/issue"} <= set(found) else None

    assert wait_for(both, what="both drift events") == {
        "file/motd": "repaired",
        "file/issue": "drifted",
    }

    def resources(*flags: str) -> list[str]:
        return sorted(e["resource"] for e in server.cli_json("drift", *flags)["events"])

    assert resources("--unrepaired") == ["file/issue"]
    assert resources("--control", "CIS-1.7.1") == ["file/motd"]
    assert resources("--control", "CIS-1.7") == []  # a tag, not a prefix
    assert resources("--manifest", "audited") == ["file/issue"]
    assert resources("--kind", "file") == ["file/issue", "file/motd"]
    assert resources("--kind", "service") == []
    assert resources("--since", "1h") == ["file/issue", "file/motd"]
    tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 2 * 86400))
    assert resources("--since", tomorrow) == []
    assert agent.path("/etc/issue").read_text() == "hacked\n"

    tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 2 * 86400))
    later = server.cli_json("runs", "web-1", "--since", tomorrow)
    assert later["runs"] == []
    newest = server.cli_json("runs", "web-1")["runs"][0]["id"]
    limited = server.cli_json("runs", "web-1", "--limit", "1")
    assert ([r["id"] for r in limited["runs"]], limited["more"]) == ([newest], True)
    missing = server.cli("report", "web-1", "--run", "nope", check=False)
    assert missing.returncode == 1
    assert "node 'web-1' has no run 'nope' ('plumb runs web-1' lists them)" in missing.stderr


def test_a_node_that_stops_reporting_is_no_report_and_never_compliant(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    (agent.root / "etc").mkdir()
    agent.start(1, 0, "--no-watch")  # a run every second
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    pushed = server.cli_json("push", str(write(tmp_path / "motd.yaml", MOTD)))
    reported(server, pushed["revision"], "web-1")
    node = wait_for(
        lambda: (n := server.nodes()["web-1"])["state"] == "connected" and n, what="reports"
    )
    assert node["run_interval_s"] == 1.0
    assert node["last_report_at"] is not None
    assert agent.process is not None
    agent.process.send_signal(signal.SIGSTOP)  # wedged: connected, but no run ends
    try:
        silent = wait_for(
            lambda: (n := server.nodes()["web-1"])["state"] == "no_report" and n,
            timeout=15,
            what="no report",
        )
        compliance = server.cli("compliance", "--json", check=False)
        printed = server.cli("nodes").stdout
    finally:
        agent.process.send_signal(signal.SIGCONT)
    assert silent["compliance"]["counts"] == {"no_report": 2}
    assert compliance.returncode == 3  # not fully compliant
    assert json.loads(compliance.stdout)["fleet"]["counts"] == {"no_report": 2}
    assert "no report" in printed
    back = wait_for(
        lambda: (n := server.nodes()["web-1"])["state"] == "connected" and n, what="back"
    )
    assert back["compliance"]["counts"] == {"in_sync": 2}
