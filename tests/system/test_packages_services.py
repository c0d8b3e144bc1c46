"""Packages and services on a real systemd host, through the installed agent.

Every test boots its own container (tests/system/conftest.py), installs the
agent's .deb, enrolls it against a server outside the container and pushes
manifests with `plumb push`; what happened is read back inside the host with
dpkg and systemctl, and on the server with `plumb report` and `plumb drift`.
The agent's periodic run is 30 minutes away, so anything repaired here was
repaired by a push or by a watcher.
"""

from __future__ import annotations

from pathlib import Path

from tests.integration.harness import wait_for
from tests.system.conftest import Host

UNIT = """\
[Unit]
Description=Plumb test daemon

[Service]
ExecStart=/usr/bin/plumb-hello

[Install]
WantedBy=multi-user.target
"""


def manifest(
    *, version: str = "1.0", greeting: str = "hi", mode: str = "enforce", extra: str = ""
) -> str:
    unit = "".join(f"        {line}\n" if line else "\n" for line in UNIT.splitlines())
    return f"""\
name: hello
target: {{all: true}}
mode: {mode}
resources:
  - kind: package
    name: hello
    spec: {{package: plumb-hello, version: "{version}"}}
  - kind: package
    name: other
    spec: {{package: plumb-other}}
  - kind: file
    name: hello-conf
    spec: {{path: /etc/plumb-hello.conf, content: "greeting = {greeting}\\n", mode: "0644"}}
    notify: [service/hello]
  - kind: service
    name: hello
    spec:
      unit: plumb-hello
      state: running
      enabled: true
      content: |
{unit}    require: [package/hello]
{extra}"""


def apt_transactions(host: Host) -> int:
    log = host.run("cat", "/var/log/apt/history.log", check=False).stdout
    return log.count("Start-Date:")


def starts(host: Host) -> int:
    """How many times the daemon has started (it logs one line per start)."""
    return host.run("journalctl", "-u", "plumb-hello", "--no-pager").stdout.count(" starting with")


def test_package_unit_file_and_service_converge(host: Host, tmp_path: Path) -> None:
    transactions = apt_transactions(host)
    revision = host.push(tmp_path / "hello.yaml", manifest())
    statuses = host.wait_applied(revision)
    assert statuses == {
        "package/hello": "repaired",
        "package/other": "repaired",
        "file/hello-conf": "repaired",
        "service/hello": "repaired",
    }
    assert host.dpkg_version("plumb-hello") == "1.0"
    assert host.dpkg_version("plumb-other") == "1.0"
    # Both packages in one apt transaction.
    assert apt_transactions(host) == transactions + 1
    assert host.run("cat", "/etc/systemd/system/plumb-hello.service").stdout == UNIT
    assert host.is_active("plumb-hello") == "active"
    assert host.is_enabled("plumb-hello") == "enabled"
    assert host.run("cat", "/etc/plumb-hello.conf").stdout == "greeting = hi\n"
    # Started once, after its config was written: no refresh on top of the start.
    assert starts(host) == 1
    # The report shows the main process as psutil saw it inside the host.
    service = next(r for r in host.report()["results"] if r["id"] == "service/hello")
    assert service["observed"]["main_pid"] == str(host.main_pid("plumb-hello"))
    assert service["observed"]["memory_rss"].endswith(" MiB")
    assert service["observed"]["active"] == "active (running)"


def test_a_changed_config_file_restarts_the_service_once(host: Host, tmp_path: Path) -> None:
    host.wait_applied(host.push(tmp_path / "hello.yaml", manifest()))
    pid = host.main_pid("plumb-hello")
    assert pid > 0

    statuses = host.wait_applied(host.push(tmp_path / "hello.yaml", manifest(greeting="hello")))
    assert statuses["file/hello-conf"] == "repaired"
    assert statuses["service/hello"] == "repaired"  # the restart
    assert statuses["package/hello"] == "in_sync"
    assert host.main_pid("plumb-hello") not in (0, pid)
    assert starts(host) == 2
    restart = next(r for r in host.report()["results"] if r["id"] == "service/hello")
    assert "notified by file/hello-conf" in str(restart["changes"])


def test_moving_the_pin_upgrades_and_downgrades(host: Host, tmp_path: Path) -> None:
    host.wait_applied(host.push(tmp_path / "hello.yaml", manifest(version="1.0")))
    assert host.dpkg_version("plumb-hello") == "1.0"
    assert host.dpkg_version("plumb-hello-lib") is None

    statuses = host.wait_applied(host.push(tmp_path / "hello.yaml", manifest(version="2.0")))
    assert statuses["package/hello"] == "repaired"
    assert host.dpkg_version("plumb-hello") == "2.0"
    assert host.dpkg_version("plumb-hello-lib") == "1.0"  # its new dependency

    statuses = host.wait_applied(host.push(tmp_path / "hello.yaml", manifest(version="1.0")))
    assert statuses["package/hello"] == "repaired"
    assert host.dpkg_version("plumb-hello") == "1.0"


def test_out_of_band_stop_disable_and_remove_are_repaired_without_a_periodic_run(
    host: Host, tmp_path: Path
) -> None:
    host.wait_applied(host.push(tmp_path / "hello.yaml", manifest()))
    pid = host.main_pid("plumb-hello")

    host.run("systemctl", "stop", "plumb-hello")
    wait_for(lambda: host.main_pid("plumb-hello") not in (0, pid), timeout=30, what="a restart")
    assert host.is_active("plumb-hello") == "active"

    host.run("systemctl", "disable", "plumb-hello")
    wait_for(lambda: host.is_enabled("plumb-hello") == "enabled", timeout=30, what="re-enable")

    host.run("apt-get", "remove", "-y", "-q", "plumb-other")
    wait_for(lambda: host.dpkg_version("plumb-other") == "1.0", timeout=60, what="reinstall")

    drift = host.server.cli_json("drift", "--node", "h1")["events"]
    assert {"service/hello", "package/other"} <= {e["resource"] for e in drift}


def test_audit_mode_reports_an_out_of_band_stop_and_leaves_it(host: Host, tmp_path: Path) -> None:
    host.wait_applied(host.push(tmp_path / "hello.yaml", manifest()))
    revision = host.push(tmp_path / "hello.yaml", manifest(mode="audit"))
    assert set(host.wait_applied(revision).values()) == {"in_sync"}

    host.run("systemctl", "stop", "plumb-hello")
    report = host.wait_report(
        lambda r: any(
            x["id"] == "service/hello" and x["status"] == "drifted" for x in r["results"]
        ),
        "the stop to be reported as drift",
    )
    assert report["trigger"] == "watch"
    assert host.is_active("plumb-hello") == "inactive"
    drift = host.server.cli_json("drift", "--node", "h1")["events"]
    assert any(e["resource"] == "service/hello" for e in drift)


def test_a_missing_package_fails_alone_and_its_dependents_are_skipped(
    host: Host, tmp_path: Path
) -> None:
    broken = manifest().replace("package: plumb-hello,", "package: plumb-nosuch,")
    statuses = host.wait_applied(host.push(tmp_path / "hello.yaml", broken))
    # The push's run repairs the others; the package database changing under
    # the watcher then retries the failed one once (a WATCH run), which may
    # already be the newest report: the others are in sync by then.
    assert statuses.pop("package/hello") == "failed"
    assert statuses.pop("service/hello") == "skipped"
    assert set(statuses.values()) <= {"repaired", "in_sync"}
    failed = next(r for r in host.report()["results"] if r["id"] == "package/hello")
    assert "Unable to locate package plumb-nosuch" in failed["error"]
    assert host.dpkg_version("plumb-other") == "1.0"
    assert host.run("cat", "/etc/plumb-hello.conf").stdout == "greeting = hi\n"
    assert host.is_active("plumb-hello") == "inactive"


def test_a_run_finishes_what_an_interrupted_dpkg_left_half_done(host: Host, tmp_path: Path) -> None:
    """dpkg killed mid-run: a package unpacked but not configured, and dpkg's
    journal of the status change not yet folded into its database."""
    debs = host.run("ls", "/srv/repo").stdout.split()
    other = next(name for name in debs if name.startswith("plumb-other_"))
    host.run("dpkg", "--unpack", f"/srv/repo/{other}")
    # The journal entry dpkg writes as it starts configuring (its full stanza).
    stanza = host.run("dpkg-query", "--status", "plumb-other").stdout
    half = stanza.replace("install ok unpacked", "install ok half-configured")
    host.machine.write_file("/var/lib/dpkg/updates/0001", half)
    # This is what an operator would meet: apt refuses to do anything.
    refused = host.run("apt-get", "install", "-y", "-q", "plumb-hello", check=False)
    assert "dpkg was interrupted" in refused.stderr

    statuses = host.wait_applied(host.push(tmp_path / "hello.yaml", manifest()))
    assert statuses["package/hello"] == "repaired", str(host.report()["results"])
    assert host.run("dpkg", "--audit", check=False).stdout == ""
    assert host.dpkg_version("plumb-other") == "1.0"
    assert host.dpkg_version("plumb-hello") == "1.0"
