"""Staged rollouts on a real fleet: canary, batches, halt, rollback, resume, restart.

A real server and real agents over mutual TLS on loopback, driven through
the ``plumb`` CLI. A manifest "fails on some hosts" the way one does in a
fleet: it writes into a directory only some hosts have (the file kind does
not make parent directories), so its run fails exactly there.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.session import DEAD_AFTER_S
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, reported, wait_for

V1 = """\
name: app
target: {labels: {role: web}}
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "v1\\n"}
"""

V2 = """\
name: app
target: {labels: {role: web}}
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "v2\\n"}
  - kind: file
    name: app-conf
    spec: {path: /srv/app/app.conf, content: "v2\\n"}
"""


def fleet(
    server: Server,
    enrolled: Callable[..., Agent],
    names: list[str],
    broken: frozenset[str] = frozenset(),
    offline: frozenset[str] = frozenset(),
) -> dict[str, Agent]:
    """Agents, started but for ``offline``; ``broken`` ones have no /srv/app, so V2
    fails on them."""
    agents = {}
    for name in names:
        agent = enrolled(name, role="web")
        (agent.root / "etc").mkdir()
        if name not in broken:
            (agent.root / "srv" / "app").mkdir(parents=True)
        if name not in offline:
            agent.start()
        agents[name] = agent
    online = [n for n in names if n not in offline]
    wait_for(lambda: all(server.nodes()[n]["connected"] for n in online), what="sessions")
    return agents


def status(server: Server) -> Any:
    return server.cli_json("rollout", "status")["rollout"]


def until(server: Server, state: str, timeout: float = 30) -> Any:
    return wait_for(
        lambda: (r := status(server)) is not None and r["state"] == state and r,
        timeout=timeout,
        what=f"the rollout to be {state}",
    )


def motd(agent: Agent) -> str:
    return agent.path("/etc/motd").read_text()


def push(server: Server, path: Path, *flags: str) -> Any:
    result = server.cli("push", str(path), *flags, "--json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_a_rollout_that_fails_on_some_hosts_halts_and_rolls_back(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    names = ["web-1", "web-2", "web-3", "web-4", "web-5"]
    agents = fleet(
        server, enrolled, names, broken=frozenset({"web-3"}), offline=frozenset({"web-5"})
    )
    app = write(tmp_path / "app.yaml", V1)
    first = push(server, app)
    reported(server, first["revision"], *names[:4])

    write(tmp_path / "app.yaml", V2)
    flags = ["--canary", "1", "--batch", "2", "--max-failures", "0", "--batch-timeout", "60"]
    second = push(server, app, *flags)
    assert second["rollout"] is not None
    halted = until(server, "halted")
    by_node = {n["node"]: (n["batch"], n["state"]) for n in halted["nodes"]}
    assert by_node == {
        "web-1": (0, "succeeded"),  # the canary
        "web-2": (1, "succeeded"),
        "web-3": (1, "failed"),
        "web-4": (2, "waiting"),
        "web-5": (2, "waiting"),
    }
    (failed,) = [n for n in halted["nodes"] if n["state"] == "failed"]
    assert "file/app-conf" in failed["reason"]
    assert "1 node(s) failed, more than the 0 allowed" in halted["reason"]
    # Nodes not reached keep the previous revision, and get nothing more.
    assert motd(agents["web-4"]) == "v1\n"
    assert server.nodes()["web-4"]["applied_revision"] == first["revision"]
    assert server.nodes()["web-4"]["kept_revision"] == first["revision"]
    assert server.nodes()["web-1"]["kept_revision"] is None
    assert "1/2 (kept at 1)" in server.cli("nodes").stdout
    assert motd(agents["web-1"]) == "v2\n"
    # An offline node does not get it when it connects either: its first (and
    # only) catalog is the previous revision's.
    agents["web-5"].start()
    wait_for(lambda: agents["web-5"].path("/etc/motd").is_file(), what="web-5's catalog")
    assert motd(agents["web-5"]) == "v1\n"
    assert agents["web-5"].status()["catalog_revision"] == first["revision"]

    # Nothing else may make a revision meanwhile.
    refused = server.cli(
        "push", str(write(tmp_path / "v3.yaml", V1.replace("v1", "v3"))), check=False
    )
    assert refused.returncode == 1
    assert f"rollout {second['rollout']} of revision {second['revision']} is halted" in (
        refused.stderr
    )

    back = server.cli_json("rollout", "rollback", "-m", "v2 breaks web-3")
    assert back["rollback"]["errors"] == []
    reverting = back["rollout"]
    assert (reverting["kind"], reverting["previous_revision"]) == ("rollback", second["revision"])
    assert sorted(n["node"] for n in reverting["nodes"]) == ["web-1", "web-2", "web-3"]
    done = until(server, "done")
    assert done["id"] == reverting["id"]
    reported(server, done["revision"], *names)
    for agent in agents.values():
        assert motd(agent) == "v1\n"
    newest = server.cli_json("history")["revisions"][0]
    assert (newest["origin"], newest["message"]) == ("rollback", "v2 breaks web-3")
    # Done: pushing works again, to everyone at once.
    again = push(server, write(tmp_path / "v3.yaml", V1.replace("v1", "v3")))
    assert again["rollout"] is None
    reported(server, again["revision"], *names)
    assert {motd(a) for a in agents.values()} == {"v3\n"}


def test_a_paused_rollout_survives_a_server_restart_and_resumes(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    names = ["web-1", "web-2", "web-3"]
    agents = fleet(server, enrolled, names)
    app = write(tmp_path / "app.yaml", V1)
    first = push(server, app)
    reported(server, first["revision"], *names)
    write(tmp_path / "app.yaml", V2)
    second = push(server, app, "--canary", "1", "--pause-after-canary")
    paused = until(server, "paused")
    assert [(n["node"], n["state"]) for n in paused["nodes"]] == [
        ("web-1", "succeeded"),
        ("web-2", "waiting"),
        ("web-3", "waiting"),
    ]
    assert "the canary batch is done" in paused["reason"]

    server.stop()
    # web-2 comes back with nothing: what the restarted server hands it is all it has.
    agents["web-2"].stop()
    (agents["web-2"].state_dir / "catalog.pb").unlink()
    agents["web-2"].path("/etc/motd").unlink()
    server.start()
    assert status(server)["state"] == "paused"
    agents["web-2"].start()
    wait_for(lambda: agents["web-2"].path("/etc/motd").is_file(), what="web-2's catalog")
    wait_for(lambda: all(server.nodes()[n]["connected"] for n in names), what="reconnected")
    for name in ("web-2", "web-3"):  # still kept on the previous revision
        assert agents[name].status()["catalog_revision"] == first["revision"]
        assert motd(agents[name]) == "v1\n"

    resumed = server.cli_json("rollout", "resume")["rollout"]
    assert resumed["state"] == "running"
    done = until(server, "done")
    assert {n["state"] for n in done["nodes"]} == {"succeeded"}
    reported(server, second["revision"], *names)
    assert {motd(a) for a in agents.values()} == {"v2\n"}
    nothing = server.cli("rollout", "resume", check=False)
    assert (nothing.returncode, "is done" in nothing.stderr) == (1, True)


def test_offline_and_late_nodes_fail_by_the_timeout_and_a_threshold_of_100_percent_never_halts(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = fleet(server, enrolled, ["web-1", "web-2"])
    late = enrolled("web-0", role="web")  # enrolled, not started until it is too late
    (late.root / "etc").mkdir()
    (late.root / "srv" / "app").mkdir(parents=True)
    app = write(tmp_path / "app.yaml", V1)
    push(server, app)
    write(tmp_path / "app.yaml", V2)
    flags = ["--batch", "1", "--max-failures", "100%", "--batch-timeout", "2"]
    second = push(server, app, *flags)
    done = until(server, "done")
    states = {n["node"]: (n["batch"], n["state"], n["reason"]) for n in done["nodes"]}
    assert states["web-0"] == (
        0,
        "failed",
        f"it did not report revision {second['revision']} within 2 s",
    )
    assert states["web-1"][1:] == ("succeeded", None)
    assert states["web-2"][1:] == ("succeeded", None)
    assert {motd(a) for a in agents.values()} == {"v2\n"}
    # Its batch was reached: when it does connect, it gets the revision.
    late.start()
    reported(server, second["revision"], "web-0")
    assert motd(late) == "v2\n"
    bad = server.cli("push", str(app), "--batch", "0", check=False)
    assert (bad.returncode, "--batch: a batch of 0 nodes would never end" in bad.stderr) == (
        1,
        True,
    )


def test_a_canary_that_fails_whole_halts_before_anyone_else_gets_it(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = fleet(server, enrolled, ["web-1", "web-2"], broken=frozenset({"web-1", "web-2"}))
    app = write(tmp_path / "app.yaml", V1)
    push(server, app)
    write(tmp_path / "app.yaml", V2)
    push(server, app, "--canary", "1")  # --max-failures defaults to 0
    halted = until(server, "halted")
    assert [(n["node"], n["state"]) for n in halted["nodes"]] == [
        ("web-1", "failed"),
        ("web-2", "waiting"),
    ]
    assert motd(agents["web-2"]) == "v1\n"
    # Aborted, each node keeps what it has, and pushes are taken again.
    aborted = server.cli_json("rollout", "abort", "-m", "fix it forward")["rollout"]
    assert (aborted["state"], aborted["reason"]) == ("aborted", "fix it forward")
    assert agents["web-2"].status()["catalog_revision"] == halted["previous_revision"]
    fixed = push(server, write(tmp_path / "app.yaml", V1.replace("v1", "v3")), "--batch", "1")
    assert fixed["rollout"] is not None
    done = until(server, "done")
    assert [len([n for n in done["nodes"] if n["batch"] == b]) for b in (0, 1)] == [1, 1]
    assert {motd(a) for a in agents.values()} == {"v3\n"}


def test_a_node_that_goes_away_during_its_batch_fails_it(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agents = fleet(server, enrolled, ["web-1", "web-2"])
    app = write(tmp_path / "app.yaml", V1)
    first = push(server, app)
    reported(server, first["revision"], "web-1", "web-2")
    write(tmp_path / "app.yaml", V2)
    push(server, app, "--canary", "1", "--pause-after-canary", "--max-failures", "1")
    until(server, "paused")
    frozen = agents["web-2"].process
    assert frozen is not None
    frozen.send_signal(signal.SIGSTOP)  # connected, until the server finds it silent
    try:
        server.cli("rollout", "resume")
        done = until(server, "done", timeout=DEAD_AFTER_S + 30)
    finally:
        frozen.send_signal(signal.SIGCONT)
    (web2,) = [n for n in done["nodes"] if n["node"] == "web-2"]
    assert (web2["state"], web2["reason"]) == ("failed", "it disconnected during its batch")


def test_plumb_rollback_can_be_staged_like_a_push(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    names = ["web-1", "web-2", "web-3"]
    agents = fleet(server, enrolled, names)
    app = write(tmp_path / "app.yaml", V1)
    first = push(server, app)
    write(tmp_path / "app.yaml", V2)
    second = push(server, app)
    reported(server, second["revision"], *names)
    back = server.cli_json(
        "rollback", "--to", str(first["revision"]), "--canary", "1", "--batch", "1"
    )
    assert back["rollout"] is not None
    done = until(server, "done")
    assert (done["kind"], done["revision"]) == ("rollback", back["revision"])
    assert [(n["node"], n["batch"]) for n in done["nodes"]] == [
        ("web-1", 0),
        ("web-2", 1),
        ("web-3", 2),
    ]
    reported(server, back["revision"], *names)
    assert {motd(a) for a in agents.values()} == {"v1\n"}


def test_resuming_a_halted_rollout_accepts_its_failures_and_halts_on_new_ones(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    names = ["web-1", "web-2", "web-3", "web-4"]
    agents = fleet(server, enrolled, names, broken=frozenset({"web-2", "web-4"}))
    app = write(tmp_path / "app.yaml", V1)
    first = push(server, app)
    reported(server, first["revision"], *names)
    write(tmp_path / "app.yaml", V2)
    push(server, app, "--batch", "1")
    halted = until(server, "halted")
    assert [n["state"] for n in halted["nodes"]] == ["succeeded", "failed", "waiting", "waiting"]
    # Go on anyway: web-2's failure is accepted; web-3 gets it, then web-4 fails anew.
    server.cli("rollout", "resume")
    again = wait_for(
        lambda: (
            (r := status(server))["state"] == "halted" and r["nodes"][3]["state"] == "failed" and r
        ),
        what="the second halt",
    )
    assert [n["state"] for n in again["nodes"]] == ["succeeded", "failed", "succeeded", "failed"]
    assert "2 node(s) failed, more than the 1 allowed" in again["reason"]
    assert motd(agents["web-3"]) == "v2\n"
