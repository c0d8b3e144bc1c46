"""Firewall and routes on real nftables and netlink, with the agent inside its own host.

The server runs in one network namespace, each agent in another, joined by a
bridge (tests/integration/netlab.py); the agents reach the server over that
network, exactly as on a real fleet.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for
from tests.integration.netlab import SERVER_IP, NetLab

NETWORK = """\
name: network
target: {all: true}
resources:
  - kind: firewall
    name: host
    spec:
      family: inet
      table: plumb
      chains:
        - name: input
          type: filter
          hook: input
          policy: drop
          rules:
            - {iifname: lo, action: accept}
            - {ct_state: [established, related], action: accept}
            - {protocol: tcp, dport: 22, action: accept, comment: ssh}
  - kind: route
    name: docs-net
    spec: {destination: 198.51.100.0/24, gateway: 192.0.2.1, metric: 100}
"""


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab(["a", "b"]) as network:
        yield network


@pytest.fixture
def net_server(lab: NetLab, tmp_path: Path) -> Iterator[Server]:
    yield from lab.served(tmp_path / "server")


@pytest.fixture
def hosts(lab: NetLab, net_server: Server, tmp_path: Path) -> Iterator[dict[str, Agent]]:
    agents = {}
    try:
        for name, ns in lab.hosts.items():
            agent = Agent(name, tmp_path / "agents", netns=ns)
            result = agent.enroll(net_server, net_server.token())
            assert result.returncode == 0, result.stderr
            agents[name] = agent
        yield agents
    finally:
        for agent in agents.values():
            agent.stop()


def _ruleset(ns: str) -> Any:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)["nftables"]


def _without_handles(ruleset: Any) -> Any:
    """The ruleset as nft lists it, minus kernel handles (renumbered when a table is remade)."""
    if isinstance(ruleset, dict):
        return {k: _without_handles(v) for k, v in ruleset.items() if k != "handle"}
    if isinstance(ruleset, list):
        return [_without_handles(v) for v in ruleset]
    return ruleset


def _rules(ns: str) -> list[dict[str, Any]]:
    return [item["rule"] for item in _ruleset(ns) if "rule" in item]


def _routes(ns: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "route", "show"], capture_output=True, text=True, check=True
    ).stdout
    return list(json.loads(out))


def _docs_route(ns: str) -> dict[str, Any] | None:
    return next((r for r in _routes(ns) if r.get("dst") == "198.51.100.0/24"), None)


def test_push_firewall_and_routes_to_hosts(
    net_server: Server, hosts: dict[str, Agent], lab: NetLab, tmp_path: Path
) -> None:
    pushed = net_server.push(write(tmp_path / "network.yaml", NETWORK))
    assert pushed.returncode == 0, pushed.stderr
    for name, agent in hosts.items():
        result = agent.run_once()
        assert result.returncode == 0, result.stderr + result.stdout
        ns = lab.hosts[name]
        rules = _rules(ns)
        assert len(rules) == 3 and {r["table"] for r in rules} == {"plumb"}
        assert any(r.get("comment") == "ssh" for r in rules)
        chain = next(i["chain"] for i in _ruleset(ns) if "chain" in i)
        assert (chain["hook"], chain["policy"]) == ("input", "drop")
        route = _docs_route(ns)
        assert route is not None and route["gateway"] == SERVER_IP and route["metric"] == 100
    report = net_server.cli_json("report", "a")
    assert {r["id"]: r["status"] for r in report["results"]} == {
        "firewall/host": "repaired",
        "route/docs-net": "repaired",
    }
    # The agent still reaches its server through its own new firewall.
    assert hosts["a"].run_once().returncode == 0


def test_out_of_band_changes_are_repaired_and_reported(
    net_server: Server, hosts: dict[str, Agent], lab: NetLab, tmp_path: Path
) -> None:
    assert net_server.push(write(tmp_path / "network.yaml", NETWORK)).returncode == 0
    agent, ns = hosts["a"], lab.hosts["a"]
    assert agent.run_once().returncode == 0
    subprocess.run(["ip", "-n", ns, "route", "del", "198.51.100.0/24"], check=True)
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "flush", "chain", "inet", "plumb", "input"], check=True
    )
    assert _docs_route(ns) is None and _rules(ns) == []
    # The flushed chain keeps its drop policy: the host is cut off from its
    # server, and repairs itself from its cached catalog all the same.
    assert agent.run_once(timeout=3).returncode == 0
    assert _docs_route(ns) is not None and len(_rules(ns)) == 3
    # Its report waited in the spool; the next contact delivers it.
    assert agent.run_once().returncode == 0
    assert agent.status()["spooled_reports"] == 0
    drift = net_server.cli_json("drift", "--node", "a")["events"]
    assert {e["resource"] for e in drift} == {"firewall/host", "route/docs-net"}


def test_audit_mode_reports_and_changes_nothing(
    net_server: Server, hosts: dict[str, Agent], lab: NetLab, tmp_path: Path
) -> None:
    audit = NETWORK.replace("resources:", "mode: audit\nresources:")
    assert net_server.push(write(tmp_path / "network.yaml", audit)).returncode == 0
    result = hosts["a"].run_once()
    assert result.returncode == 2
    ns = lab.hosts["a"]
    assert _rules(ns) == [] and _docs_route(ns) is None
    report = net_server.cli_json("report", "a")
    assert {r["status"] for r in report["results"]} == {"drifted"}


def test_tables_not_owned_by_plumb_survive(
    net_server: Server, hosts: dict[str, Agent], lab: NetLab, tmp_path: Path
) -> None:
    ns = lab.hosts["a"]
    foreign = "table ip foreign {\n\tchain c {\n\t\tip saddr 203.0.113.7 counter drop\n\t}\n}\n"
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=foreign, text=True, check=True
    )

    def listing() -> str:
        return subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "list", "table", "ip", "foreign"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    before = listing()
    assert net_server.push(write(tmp_path / "network.yaml", NETWORK)).returncode == 0
    assert hosts["a"].run_once().returncode == 0
    changed = NETWORK.replace("dport: 22", "dport: 2222")
    assert net_server.push(write(tmp_path / "network.yaml", changed)).returncode == 0
    assert hosts["a"].run_once().returncode == 0
    assert listing() == before
    assert wait_for(
        lambda: any(r.get("comment") == "ssh" and "2222" in json.dumps(r) for r in _rules(ns)),
        timeout=5,
        what="changed rule",
    )


LOCKOUT = """\
name: network
target: {all: true}
resources:
  - kind: firewall
    name: host
    spec:
      table: plumb
      chains:
        - name: input
          type: filter
          hook: input
          policy: drop
          rules:
            - {iifname: lo, action: accept}
"""


def test_a_change_that_cuts_the_agent_off_is_reverted(
    net_server: Server, hosts: dict[str, Agent], lab: NetLab, tmp_path: Path
) -> None:
    """Forgot the 'established' rule: the agent loses its server, and undoes it by itself."""
    agent, ns = hosts["a"], lab.hosts["a"]
    assert net_server.push(write(tmp_path / "network.yaml", NETWORK)).returncode == 0
    assert agent.run_once().returncode == 0
    good = _without_handles(_ruleset(ns))

    assert net_server.push(write(tmp_path / "network.yaml", LOCKOUT)).returncode == 0
    result = agent.run_once("--confirm-timeout", "2")
    assert result.returncode == 4, result.stderr
    assert _without_handles(_ruleset(ns)) == good  # the last good table is back, rule for rule

    wait_for(
        lambda: agent.run_once().returncode in (0, 4) and agent.status()["spooled_reports"] == 0,
        timeout=60,
        what="reports delivered",
    )
    reports = net_server.cli_json("report", "a")
    firewall = next(r for r in reports["results"] if r["id"] == "firewall/host")
    assert firewall["status"] == "failed"
    assert (
        "reverted: lost connection to the server" in firewall["error"]
        or "held: reverted earlier" in firewall["error"]
    )
    # Reachable again (the report above arrived), and no tight loop: the same
    # revision is not applied again.
    assert agent.run_once().returncode == 4
    assert _without_handles(_ruleset(ns)) == good


def test_daemon_repairs_network_drift_without_a_periodic_run(
    net_server: Server, hosts: dict[str, Agent], lab: NetLab, tmp_path: Path
) -> None:
    agent, ns = hosts["a"], lab.hosts["a"]
    agent.start(interval=3600)  # only the push and the watchers can trigger runs
    wait_for(lambda: net_server.nodes()["a"]["connected"], what="session")
    assert net_server.push(write(tmp_path / "network.yaml", NETWORK)).returncode == 0
    wait_for(lambda: _docs_route(ns) is not None and len(_rules(ns)) == 3, what="converged")

    subprocess.run(["ip", "-n", ns, "route", "del", "198.51.100.0/24"], check=True)
    wait_for(lambda: _docs_route(ns) is not None, timeout=10, what="route repaired")
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "delete",
            "rule",
            "inet",
            "plumb",
            "input",
            "handle",
            str(_rules(ns)[-1]["handle"]),
        ],
        check=True,
    )
    wait_for(lambda: len(_rules(ns)) == 3, timeout=10, what="rule repaired")

    def drift_ids() -> set[str]:
        return {e["resource"] for e in net_server.cli_json("drift", "--node", "a")["events"]}

    wait_for(lambda: drift_ids() == {"route/docs-net", "firewall/host"}, what="drift events")
    assert net_server.cli_json("report", "a")["trigger"] == "watch"
