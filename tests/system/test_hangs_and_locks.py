"""Runs that cannot hang, watchers that cannot go deaf: on a real systemd host, real hangs.

Each test boots its own container (tests/system/conftest.py) with the agent
installed from its .deb and a repository of packages made for these faults:

- ``plumb-hang``, whose postinst blocks in ``sleep 1000`` while
  /etc/plumb-hang exists: apt-get, dpkg and the script hang for real;
- ``plumb-gate``, interested in /usr/share/plumb-gated (a dpkg file trigger),
  whose postinst, when triggered, blocks reading the fifo /run/plumb-gate;
  and ``plumb-gated``, which ships that directory. An operator's ``apt-get
  remove plumb-gated`` then removes the package, rewrites dpkg's status (the
  agent's watcher fires) and blocks in the trigger with apt's and dpkg's
  locks held, exactly the window in which the agent's repair once met
  "dpkg frontend lock was locked by another process" and the watcher went
  deaf. Writing to the fifo lets the operator's apt-get finish.

The agent's periodic run is 30 minutes away: whatever is repaired here was
repaired by a push or by a watcher.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.hosts.repos import apt_repo, build_deb
from tests.integration.harness import wait_for
from tests.system.conftest import AgentPackages, Host

GATE_FIFO = "/run/plumb-gate"
GATE_SCRIPT = f'if [ "$1" = triggered ] && [ -p {GATE_FIFO} ]; then read line < {GATE_FIFO}; fi'
HANG_SCRIPT = "if [ -e /etc/plumb-hang ]; then sleep 1000; fi"
HANG_UNIT = "[Service]\nType=oneshot\nExecStart=/bin/sleep 1000\n"


@pytest.fixture(scope="module")
def faults_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("fault-debs")
    debs = [
        build_deb(work, "plumb-hang", "1.0", postinst=HANG_SCRIPT),
        build_deb(
            work,
            "plumb-gate",
            "1.0",
            postinst=GATE_SCRIPT,
            triggers=["interest-noawait /usr/share/plumb-gated"],
        ),
        build_deb(work, "plumb-gated", "1.0", files={"/usr/share/plumb-gated/x": "x\n"}),
    ]
    return apt_repo(tmp_path_factory.mktemp("fault-repo"), debs)


@pytest.fixture
def host(make_host: Callable[..., Host], faults_repo: Path, agent_packages: AgentPackages) -> Host:
    booted = make_host(repos=[(faults_repo, "/srv/faults")])
    booted.install_enroll_and_start(agent_packages.debs["1"])
    return booted


def agent_processes(host: Host) -> list[str]:
    """The command lines of every process in the agent's cgroup (the agent, and
    whatever it started that is still there)."""
    script = (
        "for p in /proc/[0-9]*; do"
        " if grep -qs plumb-agent.service $p/cgroup; then tr '\\0' ' ' < $p/cmdline; echo; fi;"
        " done"
    )
    out = host.run("sh", "-c", script).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def result_of(report: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(r for r in report["results"] if r["id"] == rid)


# --- a command that hangs for real ---------------------------------------------------


def hangs_manifest(*, hang_state: str = "running", timeout: int = 5) -> str:
    unit = "".join(f"        {line}\n" for line in HANG_UNIT.splitlines())
    return f"""\
name: hangs
target: {{all: true}}
resources:
  - kind: package
    name: hang
    spec: {{package: plumb-hang}}
    timeout: {timeout}
  - kind: service
    name: hang
    spec:
      unit: plumb-hang-start
      state: {hang_state}
      content: |
{unit}    timeout: {timeout}
  - kind: file
    name: unrelated
    spec: {{path: /etc/plumb-unrelated, content: "converged\\n", mode: "0644"}}
"""


def test_hung_commands_time_out_are_killed_and_later_runs_go_on(host: Host, tmp_path: Path) -> None:
    host.run("touch", "/etc/plumb-hang")  # plumb-hang's postinst will block

    revision = host.push(tmp_path / "hangs.yaml", hangs_manifest())
    report = host.wait_report(lambda r: r["revision"] >= revision, "the run of the hangs", 90)

    package, service = result_of(report, "package/hang"), result_of(report, "service/hang")
    assert package["status"] == "failed"
    assert "timed out after 5 s" in package["error"]
    assert "Setting up plumb-hang (1.0)" in package["error"]  # apt's output until the kill
    assert service["status"] == "failed"
    assert "systemctl" in service["error"] and "timed out after 5 s" in service["error"]
    # The rest of the run went on.
    assert result_of(report, "file/unrelated")["status"] == "repaired"
    # Each stopped at its timeout, plus the kill's grace and a margin.
    assert package["duration_s"] < 5 + 2 + 3
    assert service["duration_s"] < 5 + 2 + 3

    # Nothing the agent started is left: no apt-get, dpkg, postinst or its sleep,
    # no systemctl; once it is idle, only the agent is in its cgroup. (A watcher
    # may have retried the failures once meanwhile, timing out the same way.)
    # The unit's own sleep is systemd's, in the unit's cgroup, and goes on.
    def alone() -> list[str] | None:
        found = agent_processes(host)
        return found if len(found) == 1 else None

    # What was seen alone, not a second look: a watcher's retry may start anew.
    [agent] = wait_for(alone, 30, "the agent alone in its cgroup")
    assert "plumb-agent" in agent and "daemon" in agent
    assert host.is_active("plumb-hang-start") == "activating"

    # The daemon is not stalled: the next run happens, and repairs both once
    # nothing hangs (dpkg --configure -a finishes the package killed mid-way;
    # stopping the unit ends its start job). The package's repair may come a
    # moment before the push: a watcher event after the rm retries the failed
    # package once, and then the push run finds it in sync; either way it is
    # configured for real (dpkg --audit is empty).
    host.run("rm", "/etc/plumb-hang")
    revision = host.push(tmp_path / "hangs.yaml", hangs_manifest(hang_state="stopped"))
    statuses = host.wait_applied(revision, timeout=60)
    assert statuses["package/hang"] in ("repaired", "in_sync")
    assert statuses["service/hang"] == "repaired"
    assert host.dpkg_version("plumb-hang") == "1.0"
    assert host.run("dpkg", "--audit").stdout == ""
    assert host.is_active("plumb-hang-start") in ("inactive", "failed")  # its sleep, killed


# --- the package manager busy with an operator's apt-get -------------------------------


def gated_manifest(timeout: int | None) -> str:
    limit = f"\n    timeout: {timeout}" if timeout is not None else ""
    return f"""\
name: gated
target: {{all: true}}
resources:
  - kind: package
    name: gated
    spec: {{package: plumb-gated}}{limit}
"""


class Operator:
    """An operator's own apt-get on the host, run as a transient unit so it can block."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.runs = 0

    def remove_held(self) -> str:
        """``apt-get remove plumb-gated``, left blocked in plumb-gate's trigger
        (the locks held) once the package is gone; the unit's name."""
        self.runs += 1
        name = f"operator-apt-{self.runs}"
        self.host.run("mkfifo", GATE_FIFO)
        self.host.run(
            "systemd-run",
            f"--unit={name}",
            "--setenv=DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "remove",
            "-y",
            "-q",
            "plumb-gated",
        )
        wait_for(lambda: self.host.dpkg_version("plumb-gated") is None, 30, "the removal")
        assert self.host.is_active(name) == "active"  # still in the trigger, holding the lock
        return name

    def release(self, name: str) -> None:
        """Let the blocked apt-get finish (and release dpkg's locks)."""
        self.host.run("sh", "-c", f"echo go > {GATE_FIFO}")
        wait_for(lambda: self.host.is_active(name) != "active", 30, f"{name} to finish")
        self.host.run("rm", "-f", GATE_FIFO)


def test_a_busy_package_manager_is_waited_for_and_the_watcher_never_goes_deaf(
    host: Host, tmp_path: Path
) -> None:
    host.apt_install("plumb-gate")  # the operator's package with the trigger
    path = tmp_path / "gated.yaml"
    assert host.wait_applied(host.push(path, gated_manifest(timeout=5))) == {
        "package/gated": "repaired"
    }
    operator = Operator(host)

    # 1. The lock is held longer than the resource's 5 s: the watcher's run waits
    # (backing off), gives up, and says why.
    held = operator.remove_held()
    report = host.wait_report(
        lambda r: result_of(r, "package/gated")["status"] == "failed", "a failure", 60
    )
    error = result_of(report, "package/gated")["error"]
    assert report["trigger"] == "watch"
    assert "the package manager is busy" in error and "still busy after" in error
    assert "dpkg frontend lock was locked by another process" in error
    assert host.dpkg_version("plumb-gated") is None
    # Once the operator's apt-get is done, the next change it makes is heard.
    operator.release(held)
    wait_for(lambda: host.dpkg_version("plumb-gated") == "1.0", 60, "the repair after the lock")
    assert (
        host.wait_report(
            lambda r: result_of(r, "package/gated")["status"] == "repaired", "the repair"
        )["trigger"]
        == "watch"
    )

    # 2. With the default timeout the run itself waits out the operator's apt-get.
    revision = host.push(path, gated_manifest(timeout=None))
    assert host.wait_applied(revision) == {"package/gated": "in_sync"}
    seen = len(host.agent_log())
    held = operator.remove_held()
    wait_for(
        lambda: "the package manager is busy" in host.agent_log()[seen:], 30, "the agent to wait"
    )
    operator.release(held)
    wait_for(lambda: host.dpkg_version("plumb-gated") == "1.0", 60, "the repair in the same run")
    report = host.wait_report(
        lambda r: result_of(r, "package/gated")["status"] == "repaired", "the repair"
    )
    assert report["trigger"] == "watch"
    assert "package/gated: failed" not in host.agent_log()[seen:]

    # 3. Later removals are still repaired: the watcher did not go deaf.
    # The agent's own apt-get may still be finishing its repair (the package is
    # configured before apt-get lets go of the lock): this operator waits for it.
    for _ in range(2):
        host.run("apt-get", "-o", "DPkg::Lock::Timeout=60", "remove", "-y", "-q", "plumb-gated")
        wait_for(lambda: host.dpkg_version("plumb-gated") == "1.0", 60, "the reinstall")
