"""Smoke tests of the host and repository fixtures themselves, against the real things."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from modules.capabilities import CAP_NET_ADMIN, has
from tests.hosts import CommandFailed, run
from tests.hosts.repos import apt_repo, build_deb, build_rpm, dnf_root, rpm_repo
from tests.hosts.systemd_host import (  # noqa: F401
    HostError,
    SystemdHost,
    sweep_orphans,
    systemd_rootfs_fixture,
)

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


@pytest.fixture
def netns() -> Iterator[str]:
    """A caller-owned network namespace, as NetLab makes them."""
    name = f"plumb-t-{os.getpid()}"
    run(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        run(["ip", "netns", "delete", name], check=False)


def leftovers(host: SystemdHost) -> list[str]:
    """Everything of ``host`` left on the machine: cgroups, processes, mounts, netns, files."""
    found = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{host.name}")]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(host.name)]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            # A zombie holds nothing; whoever adopted it (PID 1) reaps it in its own time.
            zombie = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            if host.name in (proc / "cgroup").read_text() and not zombie:
                found.append(f"process {proc.name}")
        except OSError:
            continue  # exited while we looked
    mounts = Path("/proc/self/mounts").read_text()
    found += [ln for ln in mounts.splitlines() if host.name in ln or str(host.rootfs) in ln]
    # A host's own namespace and scratch directory are named after it.
    found += [str(p) for p in Path("/run/netns").glob(host.name)]
    found += [str(p) for p in Path(tempfile.gettempdir()).glob(f"{host.name}-*")]
    return found


def test_host_boots_runs_a_unit_and_leaves_nothing(systemd_rootfs: Path) -> None:
    host = SystemdHost(systemd_rootfs)
    with host:
        assert host.run("systemctl", "is-system-running").stdout.strip() == "running"
        assert host.run("hostname").stdout.strip() == host.name
        host.write_file(
            "/etc/systemd/system/plumb-smoke.service",
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            "ExecStart=/bin/sh -c 'echo started > /run/plumb-smoke'\n",
        )
        host.run("systemctl", "daemon-reload")
        host.run("systemctl", "start", "plumb-smoke.service")
        assert host.run("systemctl", "is-active", "plumb-smoke.service").stdout.strip() == "active"
        assert host.run("cat", "/run/plumb-smoke").stdout == "started\n"
        assert "Finished plumb-smoke.service" in host.journal("plumb-smoke.service")
        with pytest.raises(CommandFailed, match=r"(?s)exit code 1.*stderr.*No such file"):
            host.run("cat", "/nonexistent")
        # nsenter's child in the container outlives a timeout; stop() must kill it.
        with pytest.raises(CommandFailed, match="timed out"):
            host.run("sleep", "600", timeout=0.3)
        assert leftovers(host), "the check below can see a running host"
    assert leftovers(host) == []
    # The overlay took the writes; the cached rootfs is untouched.
    assert not (systemd_rootfs / "etc/systemd/system/plumb-smoke.service").exists()


def test_two_hosts_at_once_one_in_a_given_netns(systemd_rootfs: Path, netns: str) -> None:
    run(["ip", "-n", netns, "link", "add", "plumb0", "type", "veth", "peer", "name", "plumb1"])
    with SystemdHost(systemd_rootfs, netns=netns) as given, SystemdHost(systemd_rootfs) as own:
        assert "plumb0" in given.run("ip", "-brief", "link").stdout
        assert "plumb0" not in own.run("ip", "-brief", "link").stdout
        ids = {h.run("cat", "/etc/machine-id").stdout for h in (given, own)}
        assert len(ids) == 2, "each boot gets its own machine-id"
    assert leftovers(given) == leftovers(own) == []
    assert Path("/run/netns", netns).exists(), "the caller's namespace is the caller's"


def as_the_container(host: SystemdHost, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` as a unit of the container's systemd, with the container's capabilities
    (host.run keeps the test machine's)."""
    return host.run("systemd-run", "--wait", "--pipe", "--quiet", *argv, check=False)


def machine(*argv: str) -> str:
    """What a read-only command prints on the test machine itself."""
    return run(argv).stdout


def test_a_host_changes_firewall_and_routes_only_in_its_own_namespace(
    systemd_rootfs: Path,
) -> None:
    tables, routes = machine("nft", "list", "tables"), machine("ip", "route")
    with SystemdHost(systemd_rootfs) as host:
        assert has(Path(f"/proc/{host.init_pid}/status").read_text(), CAP_NET_ADMIN)
        added = as_the_container(
            host,
            "sh",
            "-ec",
            "nft add table inet plumb_caps; ip route add 198.51.100.0/24 dev lo",
        )
        assert added.returncode == 0, added.stderr
        assert "table inet plumb_caps" in host.run("nft", "list", "tables").stdout
        assert "198.51.100.0/24 dev lo" in host.run("ip", "route").stdout
        # The test machine's own firewall and routes are as they were.
        assert machine("nft", "list", "tables") == tables
        assert machine("ip", "route") == routes
    assert leftovers(host) == []


def test_a_host_booted_without_cap_net_admin_cannot_change_its_network(
    systemd_rootfs: Path,
) -> None:
    with SystemdHost(systemd_rootfs, capabilities=()) as host:
        assert not has(Path(f"/proc/{host.init_pid}/status").read_text(), CAP_NET_ADMIN)
        refused = as_the_container(host, "ip", "route", "add", "198.51.100.0/24", "dev", "lo")
        assert "Operation not permitted" in refused.stderr
        assert refused.returncode != 0
        # host.run is the test's hand, not the container's: it still can.
        host.run("ip", "route", "add", "198.51.100.0/24", "dev", "lo")
    assert leftovers(host) == []


def test_a_host_refuses_the_machines_own_network_namespace(systemd_rootfs: Path) -> None:
    """``ip netns attach`` can give the machine's namespace a name; a host must not run in it."""
    name = f"plumb-self-{os.getpid()}"
    run(["ip", "netns", "attach", name, str(os.getpid())])
    try:
        host = SystemdHost(systemd_rootfs, netns=name)
        with pytest.raises(HostError, match="is the test machine's own"):
            host.start()
        assert leftovers(host) == []
    finally:
        # Only the name goes: the namespace is the one this test runs in.
        run(["ip", "netns", "delete", name], check=False)


def test_a_failed_boot_raises_and_leaves_nothing(systemd_rootfs: Path, tmp_path: Path) -> None:
    host = SystemdHost(systemd_rootfs, binds=[(tmp_path / "missing", "/srv/missing")])
    with pytest.raises(HostError, match="systemd-nspawn exited"):
        host.start()
    assert leftovers(host) == []


def test_a_degraded_boot_names_the_failed_unit(systemd_rootfs: Path, tmp_path: Path) -> None:
    units = tmp_path / "system.control"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "plumb-broken.service").write_text("[Service]\nExecStart=/bin/false\n")
    (units / "multi-user.target.wants/plumb-broken.service").symlink_to("../plumb-broken.service")
    host = SystemdHost(systemd_rootfs, binds_ro=[(units, "/etc/systemd/system.control")])
    with pytest.raises(HostError, match=r"(?s)degraded.*plumb-broken\.service.*failed"):
        host.start()
    assert leftovers(host) == []


def test_apt_installs_pinned_versions_from_a_local_repo(
    systemd_rootfs: Path, tmp_path: Path
) -> None:
    debs = [build_deb(tmp_path, "plumb-lib", "1.0", files={"/usr/share/plumb-lib/v": "1.0\n"})]
    for version in ("1.0", "2.0"):
        debs.append(
            build_deb(
                tmp_path,
                "plumb-hello",
                version,
                depends=["plumb-lib (>= 1.0)"],
                files={"/usr/share/plumb-hello/v": f"{version}\n"},
                postinst=f"echo {version} > /var/lib/plumb-hello-postinst",
            )
        )
    repo = apt_repo(tmp_path / "repo", debs)
    with SystemdHost(systemd_rootfs, binds_ro=[(repo, "/srv/repo")]) as host:
        host.write_file(
            "/etc/apt/sources.list.d/plumb-test.list", "deb [trusted=yes] file:/srv/repo ./\n"
        )
        update = host.run("apt-get", "update", env=APT_ENV)
        assert "http" not in update.stdout, "apt must read the local repository only"
        assert update.stderr == "", "no warnings about the repository"
        for version in ("1.0", "2.0"):
            host.run("apt-get", "install", "-y", f"plumb-hello={version}", env=APT_ENV)
            status = host.run("dpkg", "-s", "plumb-hello").stdout
            assert re.search(rf"^Version: {re.escape(version)}$", status, re.M), status
            assert host.run("cat", "/usr/share/plumb-hello/v").stdout == f"{version}\n"
            assert host.run("cat", "/var/lib/plumb-hello-postinst").stdout == f"{version}\n"
        assert "install ok installed" in host.run("dpkg", "-s", "plumb-lib").stdout


def test_dnf_installs_upgrades_downgrades_and_removes_in_an_installroot(tmp_path: Path) -> None:
    rpms = [build_rpm(tmp_path, "plumb-lib", "1.0", files={"/usr/share/plumb-lib/v": "1.0\n"})]
    for version in ("1.0", "2.0"):
        rpms.append(
            build_rpm(
                tmp_path,
                "plumb-hello",
                version,
                requires=["plumb-lib >= 1.0"],
                files={"/usr/share/plumb-hello/v": f"{version}\n"},
            )
        )
    root = dnf_root(tmp_path / "dnf", rpm_repo(tmp_path / "repo", rpms))
    installed = root.root / "usr/share/plumb-hello/v"

    root.dnf("install", "plumb-hello-1.0")
    assert (root.installed("plumb-hello"), root.installed("plumb-lib")) == ("1.0-1", "1.0-1")
    root.dnf("install", "plumb-hello-2.0-1")
    assert root.installed("plumb-hello") == "2.0-1"
    assert installed.read_text() == "2.0\n"
    root.dnf("downgrade", "plumb-hello-1.0")
    assert root.installed("plumb-hello") == "1.0-1"
    assert installed.read_text() == "1.0\n"
    root.dnf("remove", "plumb-hello")
    assert root.installed("plumb-hello") is None
    assert not installed.exists()
    assert (root.root / "var/lib/rpm").is_dir(), "rpm's database is where Fedora keeps it"


def test_hosts_left_by_a_killed_test_run_are_swept(systemd_rootfs: Path) -> None:
    """A SIGKILLed pytest cannot stop its containers; the next run's sweep does."""
    boot = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.hosts.systemd_host import SystemdHost\n"
        f"host = SystemdHost(Path({str(systemd_rootfs)!r}))\n"
        "host.start()\n"
        "print(host.name, flush=True)\n"
        "time.sleep(600)  # killed long before\n"
    )
    repo = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-c", boot], stdout=subprocess.PIPE, text=True, cwd=repo
    ) as process:
        try:
            assert process.stdout is not None
            name = process.stdout.readline().strip()
        finally:
            process.kill()
    assert name.startswith("plumb-"), "the host did not boot"
    orphan = SimpleNamespace(name=name, rootfs=systemd_rootfs)
    # The container outlives the process that booted it...
    assert any("process" in item for item in leftovers(orphan))  # type: ignore[arg-type]

    assert name in sweep_orphans()
    assert leftovers(orphan) == []  # type: ignore[arg-type]
    assert name not in sweep_orphans()  # and a second sweep finds nothing of it
