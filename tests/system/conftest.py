"""Fleet hosts for system tests: a booted systemd container with the Plumb agent
installed from its .deb, enrolled to a server outside it, exactly as an operator does.

    NetLab (tests/integration/netlab.py)
      server namespace 192.0.2.1 ── plumb-server (the test's, from this checkout)
      host namespace   192.0.2.11 ── systemd-nspawn container (tests/hosts), with
                                     CAP_NET_ADMIN over that namespace alone
                                     └─ apt-get install ./plumb-agent_*.deb
                                        plumb-agent enroll …; systemctl start plumb-agent

The agent's packages are built once per test session from this checkout
(packaging/build.py: one tree, packed as revisions 1 and 2 for upgrade tests).
Test packages for the ``package`` kind come from a local apt repository,
bind-mounted read-only into each host at /srv/repo.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.hosts.repos import apt_repo, build_deb
from tests.hosts.systemd_host import (  # noqa: F401
    CAPABILITIES,
    SystemdHost,
    systemd_rootfs_fixture,
)
from tests.integration.harness import Server, wait_for
from tests.integration.netlab import NetLab

REPO = Path(__file__).resolve().parents[2]
APT_SOURCE = "deb [trusted=yes] file:/srv/repo ./\n"

# A tiny daemon: what a real service package ships. It logs its config at
# start, so a restart is visible, and then sleeps.
HELLO_DAEMON = """#!/bin/sh
echo "plumb-hello $VERSION starting with: $(cat /etc/plumb-hello.conf 2>/dev/null)"
exec sleep infinity
"""


@dataclasses.dataclass(frozen=True)
class AgentPackages:
    tree: Path
    debs: dict[str, Path]  # revision -> .deb


def build(*args: str | Path) -> str:
    """packaging/build.py, as CI and an operator run it; the package's path."""
    result = subprocess.run(
        [sys.executable, str(REPO / "packaging/build.py"), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"packaging/build.py {args} failed:\n{result.stderr}"
    return result.stdout.strip()


@pytest.fixture(scope="session")
def agent_packages(tmp_path_factory: pytest.TempPathFactory) -> AgentPackages:
    out = tmp_path_factory.mktemp("dist")
    tree = out / "tree"
    build("tree", "--component", "agent", "--out", tree)
    debs = {
        revision: Path(build("deb", "--tree", tree, "--revision", revision, "--out", out))
        for revision in ("1", "2")
    }
    return AgentPackages(tree, debs)


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plumb-hello 1.0 and 2.0 (2.0 needs plumb-hello-lib), and an unrelated plumb-other."""
    work = tmp_path_factory.mktemp("debs")
    debs = [
        build_deb(
            work,
            "plumb-hello",
            version,
            depends=("plumb-hello-lib",) if version == "2.0" else (),
            files={"/usr/bin/plumb-hello": HELLO_DAEMON.replace("$VERSION", version)},
        )
        for version in ("1.0", "2.0")
    ]
    debs.append(build_deb(work, "plumb-hello-lib", "1.0", files={"/usr/share/hello-lib": "x\n"}))
    debs.append(build_deb(work, "plumb-other", "1.0", files={"/usr/share/plumb-other": "y\n"}))
    return apt_repo(tmp_path_factory.mktemp("repo"), debs)


@pytest.fixture(scope="session")
def agent_repo(tmp_path_factory: pytest.TempPathFactory, agent_packages: AgentPackages) -> Path:
    """An apt repository with revision 2 of the agent: for upgrades through a ``package``
    resource, ``make_host(repos=[(agent_repo, "/srv/agent-repo")])``."""
    return apt_repo(tmp_path_factory.mktemp("agent-repo"), [agent_packages.debs["2"]])


@pytest.fixture(scope="session")
def server_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's .deb, built once (``make_host(binds_ro=[(server_deb.parent, ...)])``)."""
    return Path(build("deb", "--component", "server", "--out", tmp_path_factory.mktemp("srv")))


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab(["h1"]) as network:
        yield network


@pytest.fixture
def fleet_server(lab: NetLab, tmp_path: Path) -> Iterator[Server]:
    yield from lab.served(tmp_path / "server")


class Host:
    """A booted systemd host in the lab, and what a test does with it."""

    def __init__(self, machine: SystemdHost, name: str, server: Server) -> None:
        self.machine = machine
        self.name = name
        self.server = server

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.machine.run(*argv, check=check)

    def apt_install(self, *targets: str) -> None:
        self.run("apt-get", "install", "-y", "-q", "--no-install-recommends", *targets)

    def install_agent(self, deb: Path) -> None:
        self.apt_install(f"/srv/dist/{deb.name}")

    def install_enroll_and_start(self, deb: Path) -> None:
        """The agent from ``deb``, enrolled under the host's name and connected."""
        self.install_agent(deb)
        self.enroll()
        self.start_agent()

    def enroll(self) -> None:
        token = self.server.token({"role": "web"})
        address = self.server.enroll_address
        name = self.name
        self.run("plumb-agent", "enroll", "--server", address, "--token", token, "--name", name)

    def start_agent(self) -> None:
        self.run("systemctl", "start", "plumb-agent")
        wait_for(self.connected, timeout=30, what=f"{self.name} to connect")

    def connected(self) -> bool:
        node = self.server.nodes().get(self.name)
        return bool(node and node.get("connected"))

    def is_active(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()

    def is_enabled(self, unit: str) -> str:
        return self.run("systemctl", "is-enabled", unit, check=False).stdout.strip()

    def main_pid(self, unit: str) -> int:
        out = self.run("systemctl", "show", "--property=MainPID", "--value", unit).stdout
        return int(out.strip() or 0)

    def dpkg_version(self, package: str) -> str | None:
        result = self.run(
            "dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", package, check=False
        )
        status = result.stdout[:3]
        return result.stdout[3:] if result.returncode == 0 and status == "ii " else None

    def agent_log(self) -> str:
        return self.machine.journal("plumb-agent")

    def push(self, path: Path, text: str) -> int:
        """Push a manifest; the new revision."""
        path.write_text(text)
        pushed = self.server.cli("push", "--json", str(path))
        return int(json.loads(pushed.stdout)["revision"])

    def report(self) -> dict[str, Any]:
        """The node's newest report; {} while it has sent none."""
        result = self.server.cli("report", self.name, "--json", check=False)
        if result.returncode != 0:
            assert "no report" in result.stderr, result.stderr
            return {}
        return dict(json.loads(result.stdout))

    def statuses(self) -> dict[str, str]:
        return {r["id"]: r["status"] for r in self.report().get("results", [])}

    def wait_report(
        self, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60
    ) -> dict[str, Any]:
        """The newest report once ``check`` accepts it (the agent's log in the failure)."""

        def ready() -> dict[str, Any]:
            report = self.report()
            return report if report.get("results") and check(report) else {}

        try:
            return wait_for(ready, timeout=timeout, what=what)
        except AssertionError as exc:
            last = f"last report: {self.report()}\n{self.agent_log()}"
            raise AssertionError(f"{exc}\n{last}") from exc

    def wait_applied(self, revision: int, timeout: float = 60) -> dict[str, str]:
        """Statuses of the first report of ``revision`` (the push's own run)."""
        report = self.wait_report(
            lambda r: int(r.get("revision", 0)) >= revision, f"revision {revision}", timeout
        )
        return {r["id"]: r["status"] for r in report["results"]}


def host_mounts(test_repo: Path, agent_packages: AgentPackages) -> list[tuple[Path, str]]:
    """What every host mounts read-only: the test packages' repository and the agent's .debs."""
    return [(test_repo, "/srv/repo"), (agent_packages.debs["1"].parent, "/srv/dist")]


def boot(machine: SystemdHost, repos: Sequence[tuple[Path, str]] = ()) -> None:
    """Start ``machine`` with apt reading /srv/repo and ``repos`` (directory, where mounted)."""
    machine.start()
    try:
        machine.write_file("/etc/apt/sources.list.d/plumb-test.list", APT_SOURCE)
        for _, mounted in repos:
            name = mounted.strip("/").replace("/", "-")
            source = f"deb [trusted=yes] file:{mounted} ./\n"
            machine.write_file(f"/etc/apt/sources.list.d/{name}.list", source)
        machine.run("apt-get", "update", "-q")
    except BaseException:
        machine.stop()
        raise


@pytest.fixture
def make_host(
    systemd_rootfs: Path,
    lab: NetLab,
    fleet_server: Server,
    agent_packages: AgentPackages,
    test_repo: Path,
) -> Iterator[Callable[..., Host]]:
    """Boot the lab's host with the repositories mounted; the agent is not installed yet."""
    machines: list[SystemdHost] = []

    def make(
        *,
        repos: Sequence[tuple[Path, str]] = (),
        binds_ro: Sequence[tuple[Path, str]] = (),
        capabilities: Sequence[str] = CAPABILITIES,
    ) -> Host:
        """``repos``: more apt repositories, (directory, where to mount it); ``binds_ro``: more
        read-only mounts, (directory, where); ``capabilities``: granted beyond nspawn's
        defaults (``()``: a host without CAP_NET_ADMIN)."""
        machine = SystemdHost(
            systemd_rootfs,
            netns=lab.hosts["h1"],
            binds_ro=[*host_mounts(test_repo, agent_packages), *repos, *binds_ro],
            capabilities=capabilities,
        )
        machines.append(machine)
        boot(machine, repos)
        return Host(machine, "h1", fleet_server)

    try:
        yield make
    finally:
        for machine in machines:
            machine.stop()


@pytest.fixture
def host(make_host: Callable[[], Host], agent_packages: AgentPackages) -> Host:
    """A host with the agent installed from its .deb, enrolled and running."""
    booted = make_host()
    booted.install_enroll_and_start(agent_packages.debs["1"])
    return booted
