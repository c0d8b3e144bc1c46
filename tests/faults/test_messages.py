"""One message must never block the rest: catalogs and reports within their bounds, or refused.

Real server and agents; the sizes are those of protos/limits.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from agent.spool import Spool
from protos import plumb_pb2 as pb
from protos.limits import MAX_MESSAGE_BYTES
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server


def test_a_catalog_no_agent_could_receive_is_refused_at_push(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    enrolled("edge-1")
    # 1 MiB of text, named 7 times through a YAML alias: a small push, a 7 MiB catalog.
    big = "x" * 2**20
    resources = "".join(
        f"  - {{kind: file, name: f{i}, spec: {{path: /etc/f{i}, content: *big}}}}\n"
        for i in range(1, 7)
    )
    text = (
        "name: big\ntarget: {all: true}\nresources:\n"
        f"  - {{kind: file, name: f0, spec: {{path: /etc/f0, content: &big {big}}}}}\n" + resources
    )
    result = server.cli("push", "--json", str(write(tmp_path / "big.yaml", text)), check=False)
    assert result.returncode == 1
    [error] = json.loads(result.stdout)["errors"]
    assert error["message"].startswith("the catalog of node edge-1 would be 7.0 MiB, more than")
    assert server.nodes()["edge-1"]["latest_revision"] is None  # nothing stored


def test_text_in_other_scripts_does_not_swell_the_catalog_past_the_agent(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    agent.start()
    # 1.4 MB of Cyrillic: as ASCII escapes (\\u0436) its catalog was 4.2 MB.
    content = "жёлтый " * 100_000
    text = (
        "name: text\ntarget: {all: true}\nresources:\n"
        f"  - {{kind: file, name: poem, spec: {{path: /etc/poem, content: '{content}'}}}}\n"
    )
    pushed = json.loads(server.cli("push", "--json", str(write(tmp_path / "t.yaml", text))).stdout)
    assert pushed["delivered"] == ["edge-1"]
    poem = agent.path("/etc/poem")
    from tests.integration.harness import wait_for

    wait_for(lambda: poem.exists() and poem.read_text() == content, what="the poem written")


def test_a_report_the_server_will_not_take_is_set_aside_and_blocks_nothing(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    manifest = "name: m\ntarget: {all: true}\nresources:\n"
    manifest += '  - {kind: file, name: motd, spec: {path: /etc/motd, content: "hi\\n"}}\n'
    server.push(write(tmp_path / "m.yaml", manifest))
    spool = Spool(agent.state_dir / "spool.db")
    # A report larger than the server takes, oldest of all (as from an older agent).
    huge = pb.Report(
        id="huge",
        node_name="edge-1",
        revision=1,
        results=[pb.ResourceResult(id="file/x", error="e" * (MAX_MESSAGE_BYTES + 1))],
    )
    assert spool.add("huge", lambda n: huge.SerializeToString()) == 1

    run = agent.run_once(timeout=20)
    assert run.returncode == 0, run.stderr
    assert "report huge set aside: larger than any server takes" in run.stderr
    assert (spool.rejected(), spool.count()) == (1, 0)  # and this run's report went through
    assert server.cli_json("report", "edge-1")["id"] != "huge"
    status = agent.status()
    assert status["rejected_reports"] == 1 and status["spooled_reports"] == 0
