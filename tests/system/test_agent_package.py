"""The agent's and the server's own packages on a real systemd host.

Install with the line `plumb token create --install-command` prints, upgrade
with apt-get and through a ``package`` resource (the agent upgrading itself),
remove, reinstall and purge: each as an operator does it, inside a booted
container (tests/system/conftest.py). The .rpm's files are checked in a
throwaway rpm root on the test machine; its scriptlets, and the .deb's
postinst, run against a stand-in systemctl for the cases a container cannot
show (an rpm install, a stale PLUMB_AGENT_PID).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

from protos import plumb_pb2 as pb
from tests.hosts.repos import dnf_root, rpm_repo
from tests.integration.harness import Server, wait_for
from tests.system.conftest import REPO, AgentPackages, Host, build

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
UNIT = "plumb-agent"
WANTS = "/etc/systemd/system/multi-user.target.wants/plumb-agent.service"

MOTD = """\
name: motd
target: {all: true}
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd.plumb, content: "managed by plumb\\n", mode: "0644"}
"""

SELF_UPGRADE = f"""\
name: agent
target: {{all: true}}
resources:
  - kind: package
    name: agent
    spec: {{package: plumb-agent, version: "{VERSION}-2"}}
"""


def unit(host: Host, name: str, *properties: str) -> dict[str, str]:
    out = host.run("systemctl", "show", name, *(f"--property={p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def exists(host: Host, path: str) -> bool:
    return host.run("test", "-e", path, check=False).returncode == 0


def mode_owner(host: Host, path: str) -> str:
    return host.run("stat", "-c", "%a %U:%G", path).stdout.strip()


def identity(host: Host) -> str:
    """The node's key and certificate (PEM text, compared byte for byte)."""
    return host.run("cat", "/var/lib/plumb/node.key", "/var/lib/plumb/node.crt").stdout


def spooled(host: Host) -> int:
    status = json.loads(host.run("plumb-agent", "status", "--json").stdout)
    return int(status["spooled_reports"])


def install_line(host: Host, deb: str) -> str:
    """What `plumb token create --install-command` prints, for this host's .deb path."""
    created = host.server.cli(
        "token", "create", "--labels", "role=web", "--install-command", "--package", deb
    )
    return created.stdout.strip()


def test_install_layout_and_the_install_command_enroll_and_start_the_agent(
    make_host: Callable[..., Host], agent_packages: AgentPackages
) -> None:
    host = make_host()
    deb = f"/srv/dist/{agent_packages.debs['1'].name}"
    host.apt_install(deb)

    assert host.run("readlink", "/usr/bin/plumb-agent").stdout.strip() == (
        "/opt/plumb-agent/bin/plumb-agent"
    )
    assert host.run("plumb-agent", "--help").stdout.startswith("usage: plumb-agent")
    conffiles = host.run("dpkg-query", "-W", "-f=${Conffiles}", "plumb-agent").stdout.split()
    assert conffiles[0::2] == ["/etc/plumb/agent.toml"]
    assert mode_owner(host, "/var/lib/plumb") == "700 root:root"
    assert host.is_enabled(UNIT) == "enabled"
    # Not enrolled: a start (at boot, say) is skipped by the unit's condition,
    # the agent never runs and so never crash-loops on a missing identity.
    host.run("systemctl", "start", UNIT)
    assert unit(host, UNIT, "ActiveState", "ConditionResult", "NRestarts") == {
        "ActiveState": "inactive",
        "ConditionResult": "no",
        "NRestarts": "0",
    }
    assert "ConditionPathExists=/var/lib/plumb/node.crt" in host.agent_log()

    # The line enrolls under the host's name (getfqdn: /etc/hosts, no DNS).
    host.run("hostname", host.name)
    host.run("sh", "-c", f"echo '127.0.1.1 {host.name}' >> /etc/hosts")
    line = install_line(host, deb)
    # The token goes to plumb-agent on its stdin, from the shell's own printf.
    assert line.startswith(f"apt-get install -y {deb} && printf '%s\\n' plumb1.")
    assert " | plumb-agent enroll --server " in line
    assert line.endswith(" --token - && systemctl start plumb-agent")
    host.run("sh", "-c", line)
    wait_for(host.connected, timeout=30, what="the agent to connect")
    assert host.is_active(UNIT) == "active"
    assert host.server.nodes()[host.name]["labels"] == {"role": "web"}

    # Pasting a line again (another token) changes nothing: the package is
    # installed, the node keeps its identity, the agent keeps running.
    before, pid = identity(host), host.main_pid(UNIT)
    again = host.run("sh", "-c", install_line(host, deb))
    assert f"already enrolled as {host.name}" in again.stdout
    assert identity(host) == before
    assert host.main_pid(UNIT) == pid
    assert host.connected()


def test_upgrade_keeps_the_identity_and_the_reports_spooled_while_the_server_was_down(
    host: Host, agent_packages: AgentPackages, fleet_server: Server, tmp_path: Path
) -> None:
    assert host.wait_applied(host.push(tmp_path / "motd.yaml", MOTD)) == {"file/motd": "repaired"}
    assert host.run("cat", "/etc/motd.plumb").stdout == "managed by plumb\n"
    before, pid = identity(host), host.main_pid(UNIT)

    fleet_server.stop()
    host.machine.write_file("/etc/motd.plumb", "changed out of band\n")
    wait_for(
        lambda: host.run("cat", "/etc/motd.plumb").stdout == "managed by plumb\n",
        timeout=30,
        what="the watcher to repair the file",
    )
    wait_for(lambda: spooled(host) >= 1, timeout=30, what="the repair's report to be spooled")

    host.install_agent(agent_packages.debs["2"])
    assert host.dpkg_version("plumb-agent") == f"{VERSION}-2"
    assert host.is_active(UNIT) == "active"
    assert host.main_pid(UNIT) not in (0, pid)  # restarted by the postinst
    assert unit(host, UNIT, "NRestarts") == {"NRestarts": "0"}  # cleanly, not by a crash
    assert identity(host) == before
    assert spooled(host) >= 1

    fleet_server.start()
    wait_for(host.connected, timeout=30, what="the upgraded agent to reconnect")
    wait_for(lambda: spooled(host) == 0, timeout=30, what="the spool to be delivered")
    events = fleet_server.cli_json("drift", "--node", host.name)["events"]
    assert [(e["resource"], e["status"]) for e in events] == [("file/motd", "repaired")]
    assert {c["field"] for c in events[0]["changes"]} == {"content"}


def pushed_reports(server: Server, node: str, revision: int) -> list[pb.Report]:
    """The reports of ``node``'s push runs of ``revision`` (all stored, not only the last)."""
    with sqlite3.connect(server.data_dir / "plumb.db") as db:
        rows = db.execute(
            "SELECT body FROM reports WHERE node = ? AND revision = ?", (node, revision)
        ).fetchall()
    reports = [pb.Report.FromString(body) for (body,) in rows]
    return [r for r in reports if r.trigger == pb.PUSH]


def test_the_agent_upgrades_itself_through_a_package_resource(
    make_host: Callable[..., Host],
    agent_packages: AgentPackages,
    agent_repo: Path,
    fleet_server: Server,
    tmp_path: Path,
) -> None:
    host = make_host(repos=[(agent_repo, "/srv/agent-repo")])
    host.install_agent(agent_packages.debs["1"])
    host.enroll()
    host.start_agent()
    pid = host.main_pid(UNIT)

    revision = host.push(tmp_path / "agent.yaml", SELF_UPGRADE)
    # The run that upgraded the agent was reported...
    reports = wait_for(
        lambda: pushed_reports(fleet_server, host.name, revision),
        timeout=90,
        what="the upgrading run's report",
    )
    report = min(reports, key=lambda r: r.finished_at)
    assert {r.id: pb.Status.Name(r.status) for r in report.results} == {"package/agent": "REPAIRED"}
    # ...and the agent then became the new version in place: exec'd in the
    # same process (systemd saw no restart), connected again.
    wait_for(
        lambda: host.agent_log().count("session established") >= 2,
        timeout=30,
        what="the new version's session",
    )
    assert "restarting into the new version" in host.agent_log()
    assert host.main_pid(UNIT) == pid
    assert unit(host, UNIT, "ActiveState", "NRestarts") == {
        "ActiveState": "active",
        "NRestarts": "0",
    }
    assert host.dpkg_version("plumb-agent") == f"{VERSION}-2"
    assert host.run("dpkg", "--audit").stdout == ""
    assert not exists(host, "/var/lib/plumb/restart-requested")
    # The new version's own first run finds the package as pinned.
    host.wait_report(
        lambda r: r["trigger"] == "start" and r["results"][0]["status"] == "in_sync",
        "the restarted agent's run",
    )


def test_remove_keeps_the_identity_reinstall_carries_on_and_purge_deletes_it(
    host: Host, agent_packages: AgentPackages
) -> None:
    before = identity(host)

    host.run("apt-get", "remove", "-y", "-q", "plumb-agent")
    assert host.is_active(UNIT) == "inactive"
    assert unit(host, UNIT, "LoadState") == {"LoadState": "not-found"}
    # No enablement symlink left dangling behind the removed unit file.
    assert host.run("test", "-L", WANTS, check=False).returncode != 0
    assert not exists(host, "/opt/plumb-agent")
    assert identity(host) == before
    wait_for(lambda: not host.connected(), timeout=30, what="the server to see the agent go")

    # A reinstall is the same node again, running without a new enrollment.
    host.install_agent(agent_packages.debs["1"])
    wait_for(host.connected, timeout=30, what="the reinstalled agent to reconnect")
    assert host.is_enabled(UNIT) == "enabled"
    assert identity(host) == before

    host.run("apt-get", "purge", "-y", "-q", "plumb-agent")
    assert host.is_active(UNIT) == "inactive"
    assert not exists(host, "/var/lib/plumb")
    assert not exists(host, "/etc/plumb")
    assert host.run("dpkg-query", "-W", "plumb-agent", check=False).returncode != 0


# --- the .rpm ------------------------------------------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$1" in show) echo "$MAIN_PID" ;; esac
"""


def scriptlets(rpm: Path) -> dict[str, str]:
    """``rpm -qp --scripts``, split by scriptlet: {"postinstall": "...", ...}."""
    out = subprocess.run(
        ["rpm", "-qp", "--scripts", str(rpm)], capture_output=True, text=True, check=True
    ).stdout
    scripts: dict[str, str] = {}
    name = ""
    for line in out.splitlines(keepends=True):
        if line.endswith("scriptlet (using /bin/sh):\n"):
            name = line.split()[0]
            scripts[name] = ""
        else:
            scripts[name] += line
    return scripts


def run_scriptlet(
    script: str, args: str, work: Path, agent_pid: str | None = None, main_pid: str = "0"
) -> list[str]:
    """Run a maintainer script or scriptlet with ``args`` (space-separated) as dpkg or rpm
    would on a booted systemd host; the systemctl calls it made.

    systemctl is a stand-in that records its arguments; /run/systemd/system and
    /var/lib/plumb are redirected into ``work``.
    """
    bin_dir, state, calls = work / "bin", work / "state", work / "calls"
    for directory in (bin_dir, state, work / "run-systemd-system"):
        directory.mkdir(parents=True, exist_ok=True)
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    calls.write_text("")
    script = script.replace("/run/systemd/system", str(work / "run-systemd-system"))
    script = script.replace("/var/lib/plumb", str(state))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "MAIN_PID": main_pid}
    if agent_pid is not None:
        env["PLUMB_AGENT_PID"] = agent_pid
    subprocess.run(["sh", "-ec", script, "scriptlet", *args.split()], env=env, check=True)
    return calls.read_text().splitlines()


def test_the_rpm_installs_the_same_layout_with_sane_scriptlets(
    agent_packages: AgentPackages, tmp_path: Path
) -> None:
    rpm = Path(build("rpm", "--tree", agent_packages.tree, "--out", tmp_path / "dist"))
    root = dnf_root(tmp_path / "dnf", rpm_repo(tmp_path / "repo", [rpm]))
    # An empty root has neither python3.11 nor systemd for the scriptlets:
    # the files are checked here, the scriptlets below.
    root.rpm("-i", "--nodeps", "--noscripts", str(rpm))
    r = root.root
    assert root.installed("plumb-agent") == f"{VERSION}-1"
    assert os.access(r / "opt/plumb-agent/bin/plumb-agent", os.X_OK)
    assert os.readlink(r / "usr/bin/plumb-agent") == "/opt/plumb-agent/bin/plumb-agent"
    service = r / "usr/lib/systemd/system/plumb-agent.service"
    assert service.read_text() == (REPO / "packaging/files/plumb-agent.service").read_text()
    assert root.rpm("-qc", "plumb-agent").stdout.split() == ["/etc/plumb/agent.toml"]
    flags = root.rpm("-q", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", "plumb-agent").stdout
    assert "/etc/plumb/agent.toml cn\n" in flags  # %config(noreplace)
    assert (r / "var/lib/plumb").stat().st_mode & 0o7777 == 0o700
    assert root.rpm("-V", "--nodeps", "plumb-agent", check=False).stdout == ""  # all as packaged

    scripts = scriptlets(rpm)
    assert set(scripts) == {"postinstall", "preuninstall", "postuninstall"}
    post, preun, postun = (scripts[s] for s in ("postinstall", "preuninstall", "postuninstall"))
    # $1 counts the versions installed after the transaction: 1 install, 2 upgrade, 0 erase.
    assert run_scriptlet(post, "1", tmp_path / "a") == [
        "daemon-reload",
        "enable plumb-agent.service",
        "start plumb-agent.service",  # idle unless enrolled, as with the .deb
    ]
    assert run_scriptlet(post, "2", tmp_path / "b") == [
        "daemon-reload",
        "enable plumb-agent.service",
    ]
    assert run_scriptlet(preun, "1", tmp_path / "c") == []
    assert run_scriptlet(preun, "0", tmp_path / "d") == [
        "stop plumb-agent.service",
        "disable plumb-agent.service",
    ]
    assert run_scriptlet(postun, "0", tmp_path / "e") == []
    assert run_scriptlet(postun, "1", tmp_path / "f") == ["try-restart plumb-agent.service"]
    # Upgraded by the agent itself: no restart under its feet, a request instead...
    upgrade = tmp_path / "g"
    calls = run_scriptlet(postun, "1", upgrade, agent_pid="4242", main_pid="4242")
    assert not any("restart" in c for c in calls), calls
    assert (upgrade / "state/restart-requested").exists()
    # ...but only if that agent is the service's: a variable inherited by
    # anything else is no reason to leave the agent at the old version.
    stale = tmp_path / "h"
    calls = run_scriptlet(postun, "1", stale, agent_pid="4242", main_pid="77")
    assert calls[-1] == "try-restart plumb-agent.service"
    assert not (stale / "state/restart-requested").exists()


def test_the_deb_postinst_restarts_the_agent_unless_the_agent_upgrades_itself(
    agent_packages: AgentPackages, tmp_path: Path
) -> None:
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(agent_packages.debs["1"]), str(control)], check=True)
    postinst = (control / "postinst").read_text()
    setup = ["daemon-reload", "enable plumb-agent.service"]
    # Installed, upgraded, or reinstalled after `remove` (stopped, identity kept).
    restart = [*setup, "restart plumb-agent.service"]
    assert run_scriptlet(postinst, "configure", tmp_path / "a") == restart
    assert run_scriptlet(postinst, f"configure {VERSION}-1", tmp_path / "b") == restart
    # The service's agent upgrading itself: the restart is left to it.
    work = tmp_path / "c"
    calls = run_scriptlet(postinst, "configure 0.1-1", work, agent_pid="42", main_pid="42")
    assert not any("restart" in c for c in calls), calls
    assert (work / "state/restart-requested").exists()
    assert (work / "state").stat().st_mode & 0o777 == 0o700
    # Anything else that happens to carry the variable: restarted as usual.
    work = tmp_path / "d"
    calls = run_scriptlet(postinst, "configure 0.1-1", work, agent_pid="42", main_pid="7")
    assert calls[-1] == "restart plumb-agent.service"
    assert not (work / "state/restart-requested").exists()


# --- the server's .deb ------------------------------------------------------------


def test_the_server_package_is_idle_until_init_then_serves_its_own_host(
    make_host: Callable[..., Host], agent_packages: AgentPackages, server_deb: Path
) -> None:
    host = make_host(binds_ro=[(server_deb.parent, "/srv/server-dist")])
    host.apt_install(f"/srv/server-dist/{server_deb.name}")
    assert host.is_enabled("plumb-server") == "enabled"
    assert mode_owner(host, "/var/lib/plumb-server") == "700 plumb:plumb"
    host.run("systemctl", "start", "plumb-server")
    assert unit(host, "plumb-server", "ActiveState", "ConditionResult") == {
        "ActiveState": "inactive",
        "ConditionResult": "no",
    }

    data = "/var/lib/plumb-server"
    as_plumb = ["runuser", "-u", "plumb", "--"]
    host.run(*as_plumb, "plumb-server", "--data-dir", data, "init", "--san", "127.0.0.1")
    host.run("systemctl", "start", "plumb-server")
    assert host.is_active("plumb-server") == "active"

    # Its own `plumb` makes the install line for an agent on the same host.
    plumb = [*as_plumb, "plumb", "--config", f"{data}/operator/cli.toml"]
    deb = f"/srv/dist/{agent_packages.debs['1'].name}"

    def token() -> str:
        result = host.run(*plumb, "token", "create", "--package", deb, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    line = wait_for(token, timeout=30, what="the server to answer `plumb token create`")
    host.run("sh", "-c", line)

    def connected() -> bool:
        nodes = json.loads(host.run(*plumb, "nodes", "--json").stdout).get("nodes", [])
        return any(n.get("connected") for n in nodes)

    wait_for(connected, timeout=30, what="the agent to connect to the packaged server")

    # Removed, the server stops and keeps its data; reinstalled, it serves again.
    host.run("apt-get", "remove", "-y", "-q", "plumb-server")
    assert host.is_active("plumb-server") == "inactive"
    assert exists(host, f"{data}/server.toml")
    host.apt_install(f"/srv/server-dist/{server_deb.name}")
    assert host.is_active("plumb-server") == "active"
