"""Firewall and routes on a real systemd host, through the installed agent.

One lab for the whole module (tests/system/conftest.py): the server in its
namespace, h1 booted with CAP_NET_ADMIN over its own namespace and h2 booted
without it, each with the agent installed from its .deb, enrolled and running
as a unit of the container's systemd. Every test pushes its manifests with
`plumb push` from outside and reads what happened inside the host with
`nft -j` and `ip -j`, and on the server with `plumb report` and `plumb drift`.
The tests of h1 each start by pushing the state they need, so they do not
depend on each other's order. The agent's periodic run is 30 minutes away:
anything repaired here was repaired by a push or by a watcher.

The firewall and route are the README's example, as written there.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modules.capabilities import CAP_NET_ADMIN, has
from protos import plumb_pb2 as pb
from server import manifest
from tests.hosts.systemd_host import CAPABILITIES, SystemdHost
from tests.integration.harness import Server, wait_for
from tests.integration.netlab import SERVER_IP, NetLab
from tests.system.conftest import REPO, AgentPackages, Host, boot, host_mounts


def readme_yaml(containing: str) -> str:
    """The README's YAML block that contains ``containing``."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    return next(block for block in blocks if containing in block)


# The README's example resources (under "Kinds so far")...
README_RESOURCES = readme_yaml("kind: firewall")
# ...of which the firewall and the route (the package and service after them need nginx).
NETWORK = README_RESOURCES[: README_RESOURCES.index("  - kind: package")]
DOCS_NET = "198.51.100.0/24"  # the README route's destination, via the server (192.0.2.1)

ABSENT = """\
  - kind: firewall
    name: host
    spec: {table: plumb, state: absent}
  - kind: route
    name: docs-net
    spec: {destination: 198.51.100.0/24, metric: 100, state: absent}
"""


def manifest_text(node: str, resources: str, name: str = "network") -> str:
    return f"name: {name}\ntarget: {{names: [{node}]}}\nresources:\n{resources}"


def lockout(server: Server) -> str:
    """A second table whose output chain drops the agent's traffic to its server."""
    port = server.agent_address.rsplit(":", 1)[1]
    return f"""\
  - kind: firewall
    name: lockout
    spec:
      table: lockout
      chains:
        - name: output
          type: filter
          hook: output
          rules:
            - {{protocol: tcp, daddr: {SERVER_IP}, dport: {port}, action: drop}}
"""


def test_the_readme_example_validates() -> None:
    loaded = manifest.load("README.md", manifest_text("h1", README_RESOURCES, "readme"))
    kinds = [resource.kind for resource in loaded.resources]
    assert kinds == ["firewall", "route", "package", "service"]


# --- the lab ------------------------------------------------------------------


@pytest.fixture(scope="module")
def net_lab() -> Iterator[NetLab]:
    with NetLab(["h1", "h2"]) as network:
        yield network


@pytest.fixture(scope="module")
def net_server(net_lab: NetLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from net_lab.served(tmp_path_factory.mktemp("server"))


def running_host(
    name: str,
    capabilities: tuple[str, ...],
    rootfs: Path,
    lab: NetLab,
    server: Server,
    packages: AgentPackages,
    test_repo: Path,
) -> Iterator[Host]:
    machine = SystemdHost(
        rootfs,
        netns=lab.hosts[name],
        binds_ro=host_mounts(test_repo, packages),
        capabilities=capabilities,
    )
    boot(machine)
    try:
        host = Host(machine, name, server)
        host.install_enroll_and_start(packages.debs["1"])
        yield host
    finally:
        machine.stop()


@pytest.fixture(scope="module")
def h1(
    systemd_rootfs: Path,
    net_lab: NetLab,
    net_server: Server,
    agent_packages: AgentPackages,
    test_repo: Path,
) -> Iterator[Host]:
    """The host with CAP_NET_ADMIN (the default of every test host)."""
    yield from running_host(
        "h1", CAPABILITIES, systemd_rootfs, net_lab, net_server, agent_packages, test_repo
    )


@pytest.fixture(scope="module")
def h2(
    systemd_rootfs: Path,
    net_lab: NetLab,
    net_server: Server,
    agent_packages: AgentPackages,
    test_repo: Path,
) -> Iterator[Host]:
    """A host booted without CAP_NET_ADMIN."""
    yield from running_host(
        "h2", (), systemd_rootfs, net_lab, net_server, agent_packages, test_repo
    )


# --- what the host holds --------------------------------------------------------


def table(host: Host, name: str = "plumb") -> list[dict[str, Any]] | None:
    """``nft -j list table inet NAME`` inside the host: its objects; None if it is absent."""
    listed = host.run("nft", "-j", "list", "table", "inet", name, check=False)
    if listed.returncode != 0:
        assert "No such file or directory" in listed.stderr, listed.stderr
        return None
    return list(json.loads(listed.stdout)["nftables"])


def rules(host: Host) -> list[dict[str, Any]]:
    return [item["rule"] for item in table(host) or [] if "rule" in item]


def without_handles(objects: Any) -> Any:
    """A listing minus kernel handles (renumbered when a table is remade)."""
    if isinstance(objects, dict):
        return {k: without_handles(v) for k, v in objects.items() if k != "handle"}
    if isinstance(objects, list):
        return [without_handles(v) for v in objects]
    return objects


def docs_route(host: Host) -> dict[str, Any] | None:
    routes = json.loads(host.run("ip", "-j", "route").stdout)
    return next((r for r in routes if r.get("dst") == DOCS_NET), None)


def converged(host: Host) -> bool:
    route = docs_route(host)
    return len(rules(host)) == 3 and route is not None and route.get("gateway") == SERVER_IP


def push(host: Host, tmp_path: Path, resources: str) -> dict[str, pb.ResourceResult]:
    """Push ``resources`` as manifest "network" for ``host`` only; the results of the run
    the push caused, by resource id."""
    # A comment of its own makes every push a new revision, even of the same
    # resources: an identical push would store nothing and cause no run.
    text = manifest_text(host.name, resources) + f"# push {next(_PUSHES)}\n"
    revision = host.push(tmp_path / "network.yaml", text)
    return {r.id: r for r in push_run(host, revision).results}


_PUSHES = itertools.count(1)


def push_run(host: Host, revision: int) -> pb.Report:
    """The report of the run that the push of ``revision`` caused, as the server stored it.

    Not the node's newest report: a run that events cause may follow it at once
    (after a revert, say, which the firewall's watcher sees).
    """

    def stored() -> list[pb.Report]:
        with sqlite3.connect(host.server.data_dir / "plumb.db") as db:
            rows = db.execute(
                "SELECT body FROM reports WHERE node = ? AND revision = ?", (host.name, revision)
            ).fetchall()
        reports = [pb.Report.FromString(body) for (body,) in rows]
        return [report for report in reports if report.trigger == pb.PUSH]

    try:
        reports = wait_for(stored, timeout=60, what=f"the run of revision {revision}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{host.agent_log()}") from exc
    return min(reports, key=lambda report: report.finished_at)


def statuses(results: dict[str, pb.ResourceResult]) -> dict[str, str]:
    return {id: pb.Status.Name(r.status) for id, r in results.items()}


def drift_count(host: Host, resource: str) -> int:
    events = host.server.cli_json("drift", "--node", host.name)["events"]
    return sum(1 for event in events if event["resource"] == resource)


# --- h1: with CAP_NET_ADMIN -------------------------------------------------------


def test_the_readme_firewall_and_route_converge(h1: Host, tmp_path: Path) -> None:
    push(h1, tmp_path, ABSENT)
    assert table(h1) is None and docs_route(h1) is None

    results = push(h1, tmp_path, NETWORK)
    assert statuses(results) == {"firewall/host": "REPAIRED", "route/docs-net": "REPAIRED"}
    chains = [item["chain"] for item in table(h1) or [] if "chain" in item]
    assert [(c["name"], c["type"], c["hook"], c["policy"]) for c in chains] == [
        ("input", "filter", "input", "drop")
    ]
    assert [r.get("comment") for r in rules(h1)] == [None, None, "ssh"]
    route = docs_route(h1)
    assert route is not None
    assert (route["gateway"], route["dev"], route["metric"]) == (SERVER_IP, "eth0", 100)
    # The agent still reaches its server through its own input policy drop:
    # the next push arrives and finds everything in sync.
    in_sync = {"firewall/host": "IN_SYNC", "route/docs-net": "IN_SYNC"}
    assert statuses(push(h1, tmp_path, NETWORK)) == in_sync


def test_out_of_band_changes_are_repaired_by_the_watchers(h1: Host, tmp_path: Path) -> None:
    push(h1, tmp_path, NETWORK)
    assert converged(h1)
    drifts = {r: drift_count(h1, r) for r in ("firewall/host", "route/docs-net")}

    ssh = next(r for r in rules(h1) if r.get("comment") == "ssh")
    # Not checked in between: the watcher may put it back before a listing could look.
    h1.run("nft", "delete", "rule", "inet", "plumb", "input", "handle", str(ssh["handle"]))
    wait_for(lambda: len(rules(h1)) == 3, timeout=30, what="the deleted rule to be put back")
    assert rules(h1)[-1].get("comment") == "ssh"

    h1.run("ip", "route", "del", DOCS_NET)
    wait_for(
        lambda: docs_route(h1) is not None, timeout=30, what="the deleted route to be put back"
    )
    assert converged(h1)

    wait_for(
        lambda: all(drift_count(h1, r) > n for r, n in drifts.items()),
        timeout=30,
        what="both repairs to be reported as drift",
    )
    assert h1.report()["trigger"] == "watch"


def test_a_firewall_that_cuts_the_agent_off_is_reverted(h1: Host, tmp_path: Path) -> None:
    push(h1, tmp_path, NETWORK)
    before = without_handles(table(h1))

    results = push(h1, tmp_path, NETWORK + lockout(h1.server))
    assert statuses(results) == {
        "firewall/host": "IN_SYNC",
        "route/docs-net": "IN_SYNC",
        "firewall/lockout": "FAILED",
    }
    assert results["firewall/lockout"].error == "reverted: lost connection to the server"
    assert table(h1, "lockout") is None
    assert without_handles(table(h1)) == before
    # Still connected: the next push (without the lockout) arrives and is applied.
    wait_for(h1.connected, timeout=30, what="the agent to be connected")
    in_sync = {"firewall/host": "IN_SYNC", "route/docs-net": "IN_SYNC"}
    assert statuses(push(h1, tmp_path, NETWORK)) == in_sync


# --- h2: without CAP_NET_ADMIN -----------------------------------------------------


def test_without_cap_net_admin_both_kinds_fail_naming_it(h2: Host, tmp_path: Path) -> None:
    agent = h2.run("cat", f"/proc/{h2.main_pid('plumb-agent')}/status").stdout
    assert not has(agent, CAP_NET_ADMIN)

    results = push(h2, tmp_path, NETWORK)
    assert statuses(results) == {"firewall/host": "FAILED", "route/docs-net": "FAILED"}
    missing = (
        "unavailable: CAP_NET_ADMIN is missing (the agent needs it to change {}; "
        "running in a container without --capability=CAP_NET_ADMIN?)"
    )
    assert results["firewall/host"].error.startswith(missing.format("nftables"))
    assert results["route/docs-net"].error.startswith(missing.format("routes"))
    assert table(h2) is None and docs_route(h2) is None
