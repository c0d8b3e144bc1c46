"""The package kind's dnf provider, for real: dnf --installroot into a throwaway
root that says it is Rocky Linux 9, filled from a local rpm repository built here.

Every test goes through the kind's own API (parse, read, diff, apply or
apply_batch, read again) and checks the outcome in the root's rpm database.
Debian's rpm keeps its database under $HOME unless told otherwise; the root's
HOME (``DnfRoot.env``) tells it ``/var/lib/rpm``, so the kind runs with that HOME.
"""

from __future__ import annotations

import fcntl
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modules import registry
from modules.base import Change, Context
from modules.errors import ApplyError, Busy, ReadError
from modules.package import (
    PackageState,
    _dnf_error,
    _repoquery_versions,
    _rpm_version,
)
from tests.hosts.repos import DnfRoot, build_rpm, dnf_root, rpm_repo
from tests.modules.watching import Watching

KIND = registry.get("package")
# VERSION_ID with a minor release, as RHEL and Rocky write it; dnf's
# $releasever is the major one.
ROCKY = 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n'


@dataclass(frozen=True)
class Packages:
    repo: Path
    #: plumb-hello 3.0, newer than anything offered; installed from its file.
    hello_3: Path


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    work = tmp_path_factory.mktemp("rpms")

    def hello(version: str, requires: tuple[str, ...] = ()) -> Path:
        v = {"/usr/share/plumb-hello/v": f"{version}\n"}
        return build_rpm(work, "plumb-hello", version, requires=requires, files=v)

    rpms = [
        hello("1.0"),
        hello("2.0", requires=("plumb-hello-lib",)),
        build_rpm(work, "plumb-hello-lib", "1.0", files={"/usr/share/plumb-hello-lib/v": "1\n"}),
        build_rpm(work, "plumb-other", "1.0", files={"/usr/share/plumb-other/v": "1\n"}),
        build_rpm(work, "plumb-broken", "1.0", requires=["plumb-missing"]),
    ]
    return Packages(rpm_repo(work / "repo", rpms), hello("3.0"))


@dataclass(frozen=True)
class Host:
    ctx: Context
    root: DnfRoot

    def installed(self) -> dict[str, str]:
        """Every package in the root's rpm database: name → version-release."""
        out = self.root.rpm("-qa", "--queryformat", "%{NAME} %{VERSION}-%{RELEASE}\\n").stdout
        return dict(line.split(" ") for line in out.splitlines())

    def transactions(self) -> list[int]:
        """The ids of the transactions in the root's dnf history."""
        out = self.root.dnf("history", "list").stdout
        return [int(m.group(1)) for m in re.finditer(r"^\s*(\d+) \|", out, re.M)]


@pytest.fixture
def host(packages: Packages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    root = dnf_root(tmp_path / "dnf", packages.repo)
    (root.root / "etc/os-release").write_text(ROCKY)
    monkeypatch.setenv("HOME", root.env["HOME"])
    return Host(Context(root=root.root), root)


def converge(ctx: Context, *raws: dict[str, Any]) -> list[list[Change]]:
    """parse → read → diff → apply (one) or apply_batch (several) → read → diff == [].

    Returns each resource's changes; only those with changes are applied, as
    the engine does.
    """
    specs = [KIND.parse(raw) for raw in raws]
    states = [KIND.read(ctx, spec) for spec in specs]
    diffs = [KIND.diff(spec, state) for spec, state in zip(specs, states, strict=True)]
    items = [item for item in zip(specs, states, diffs, strict=True) if item[2]]
    if len(items) == 1:
        KIND.apply(ctx, *items[0])
    elif items:
        KIND.apply_batch(ctx, items)
    for spec in specs:
        assert KIND.diff(spec, KIND.read(ctx, spec)) == [], spec
    return diffs


def read(ctx: Context, **raw: str) -> PackageState:
    state: PackageState = KIND.read(ctx, KIND.parse(raw))
    return state


# --- the kind against a real installroot ------------------------------------------


def test_install_any_version(host: Host) -> None:
    assert read(host.ctx, package="plumb-hello") == PackageState("dnf", None)
    changes = converge(host.ctx, {"package": "plumb-hello"})
    assert changes == [[Change("state", "absent", "present")]]
    # The newest, with its dependency.
    assert host.installed() == {"plumb-hello": "2.0-1", "plumb-hello-lib": "1.0-1"}
    assert read(host.ctx, package="plumb-hello") == PackageState("dnf", "2.0-1")
    assert (host.root.root / "usr/share/plumb-hello/v").read_text() == "2.0\n"


def test_a_pin_moves_up_and_down(host: Host) -> None:
    pin = {"package": "plumb-hello"}
    assert converge(host.ctx, {**pin, "version": "1.0"}) == [[Change("version", "absent", "1.0")]]
    assert host.installed() == {"plumb-hello": "1.0-1"}

    # Up, with the release in the pin, pulling in the new dependency.
    assert converge(host.ctx, {**pin, "version": "2.0-1"}) == [
        [Change("version", "1.0-1", "2.0-1")]
    ]
    assert host.installed() == {"plumb-hello": "2.0-1", "plumb-hello-lib": "1.0-1"}
    assert (host.root.root / "usr/share/plumb-hello/v").read_text() == "2.0\n"

    # Down again: dnf install of an older version is a downgrade.
    assert converge(host.ctx, {**pin, "version": "1.0"}) == [[Change("version", "2.0-1", "1.0")]]
    assert host.installed()["plumb-hello"] == "1.0-1"
    assert (host.root.root / "usr/share/plumb-hello/v").read_text() == "1.0\n"


def test_latest_installs_and_upgrades_to_the_newest_offer(host: Host) -> None:
    latest = {"package": "plumb-hello", "version": "latest"}
    assert converge(host.ctx, latest) == [[Change("version", "absent", "2.0-1 (latest)")]]
    assert host.installed()["plumb-hello"] == "2.0-1"

    host.root.dnf("install", "plumb-hello-1.0")  # out of band
    assert read(host.ctx, **latest) == PackageState("dnf", "1.0-1", "2.0-1")
    assert converge(host.ctx, latest) == [[Change("version", "1.0-1", "2.0-1 (latest)")]]
    assert host.installed()["plumb-hello"] == "2.0-1"


def test_latest_keeps_a_version_newer_than_every_offer(host: Host, packages: Packages) -> None:
    host.root.dnf("install", str(packages.hello_3))
    latest = {"package": "plumb-hello", "version": "latest"}
    assert read(host.ctx, **latest) == PackageState("dnf", "3.0-1", "3.0-1")
    assert converge(host.ctx, latest) == [[]]


def test_absent_removes_only_the_named_package(host: Host) -> None:
    host.root.dnf("install", "plumb-hello-2.0", "plumb-other")
    changes = converge(
        host.ctx,
        {"package": "plumb-hello", "state": "absent"},
        {"package": "plumb-hello-lib"},  # pulled in by plumb-hello, now wanted for itself
    )
    assert changes == [[Change("state", "2.0-1", "absent")], []]
    assert host.installed() == {"plumb-hello-lib": "1.0-1", "plumb-other": "1.0-1"}
    assert not (host.root.root / "usr/share/plumb-hello/v").exists()


def test_a_batch_is_one_transaction(host: Host) -> None:
    host.root.dnf("install", "plumb-hello-2.0")
    before = host.transactions()
    changes = converge(
        host.ctx,
        {"package": "plumb-hello", "version": "1.0"},  # a downgrade
        {"package": "plumb-other", "version": "latest"},  # an install
        {"package": "plumb-hello-lib"},  # in sync: not applied
    )
    assert changes == [
        [Change("version", "2.0-1", "1.0")],
        [Change("version", "absent", "1.0-1 (latest)")],
        [],
    ]
    assert host.transactions() == [before[0] + 1, *before]
    last = host.root.dnf("history", "info", "last").stdout
    altered = last.split("Packages Altered:", 1)[1]
    assert re.search(r"Downgrade\s+plumb-hello-1\.0-1\.noarch", altered), last
    assert re.search(r"Install\s+plumb-other-1\.0-1\.noarch", altered), last
    assert "plumb-hello-lib" not in altered
    # The root's os-release says 9.4; dnf's $releasever is its major version.
    assert re.search(r"^Releasever\s*: 9$", last, re.M), last


def test_a_batch_with_a_removal_removes_first(host: Host) -> None:
    """dnf 4 cannot remove and install in one command that reports failure:
    removals are a transaction of their own, before the installs."""
    host.root.dnf("install", "plumb-other")
    before = host.transactions()
    converge(
        host.ctx,
        {"package": "plumb-other", "state": "absent"},
        {"package": "plumb-hello", "version": "1.0"},
    )
    assert host.installed() == {"plumb-hello": "1.0-1"}
    assert len(host.transactions()) == len(before) + 2
    assert "Install" in host.root.dnf("history", "info", "last").stdout


def test_an_unknown_package_fails_the_batch_with_dnfs_message(host: Host) -> None:
    specs = [KIND.parse({"package": name}) for name in ("nosuch", "plumb-other")]
    states = [KIND.read(host.ctx, spec) for spec in specs]
    items = [
        (spec, state, KIND.diff(spec, state)) for spec, state in zip(specs, states, strict=True)
    ]
    message = r"dnf install failed \(exit 1\): Error: Unable to find a match: nosuch$"
    with pytest.raises(ApplyError, match=message):
        KIND.apply_batch(host.ctx, items)
    # One transaction: nothing of it happened, and the rest reads as before.
    assert host.installed() == {}
    assert KIND.diff(specs[1], KIND.read(host.ctx, specs[1])) == [
        Change("state", "absent", "present")
    ]
    # What the engine does next: each alone; the bad one fails alone.
    assert converge(host.ctx, {"package": "plumb-other"}) == [
        [Change("state", "absent", "present")]
    ]
    with pytest.raises(ApplyError, match="nosuch"):
        KIND.apply(host.ctx, *items[0])
    assert host.installed() == {"plumb-other": "1.0-1"}


def test_a_pin_not_offered_says_so(host: Host) -> None:
    spec = KIND.parse({"package": "plumb-hello", "version": "9.9"})
    state = KIND.read(host.ctx, spec)
    assert state == PackageState("dnf", None, None, pin_available=False)
    changes = KIND.diff(spec, state)
    assert changes == [Change("version", "absent", "9.9 (not offered)")]
    with pytest.raises(ApplyError, match=r"Unable to find a match: plumb-hello-9\.9$"):
        KIND.apply(host.ctx, spec, state, changes)
    latest = {"package": "nosuch", "version": "latest"}
    assert KIND.diff(KIND.parse(latest), read(host.ctx, **latest)) == [
        Change("version", "absent", "latest (none offered)")
    ]


def test_a_dependency_problem_is_reported_whole(host: Host) -> None:
    with pytest.raises(ApplyError) as caught:
        converge(host.ctx, {"package": "plumb-broken"})
    assert "nothing provides plumb-missing needed by plumb-broken-1.0-1" in str(caught.value)
    assert host.installed() == {}


def test_an_unreadable_database_is_a_read_error_not_absent(host: Host) -> None:
    (host.root.root / "var/lib").mkdir(parents=True)
    (host.root.root / "var/lib/rpm").write_text("not a database\n")
    with pytest.raises(ReadError, match="rpm -q plumb-hello failed: error: cannot open"):
        read(host.ctx, package="plumb-hello")


def test_an_rpm_transaction_in_progress_is_busy_not_a_failure(host: Host) -> None:
    """Another rpm holding the transaction lock (rpm takes it with fcntl, as here):
    the kind says Busy, which the engine waits out; once it is released, the same
    change goes through."""
    lock = host.root.root / "var/lib/rpm/.rpm.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    spec = KIND.parse({"package": "plumb-other"})
    state = KIND.read(host.ctx, spec)
    changes = KIND.diff(spec, state)
    with open(lock, "a") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        with pytest.raises(
            Busy, match=r"^dnf install failed \(exit 1\): the package manager is busy"
        ):
            KIND.apply(host.ctx, spec, state, changes)
        assert host.installed() == {}
        fcntl.lockf(held, fcntl.LOCK_UN)
    KIND.apply(host.ctx, spec, state, changes)
    assert host.installed() == {"plumb-other": "1.0-1"}


# --- watch: the root's rpm database ------------------------------------------------


@pytest.fixture
def watching(host: Host) -> Iterator[Callable[..., Watching]]:
    host.root.dnf("install", "plumb-other")  # the database exists
    specs = [KIND.parse({"package": name}) for name in ("plumb-other", "plumb-hello")]
    started: list[Watching] = []

    def start(snapshot: Callable[[], Any] | None = None) -> Watching:
        watcher = Watching(KIND, host.ctx, specs, snapshot)
        started.append(watcher)
        # Any change to the database file will do to learn that it listens.
        watcher.prime((host.root.root / "var/lib/rpm/rpmdb.sqlite").touch)
        while watcher.wait_calls(watcher.calls + 1, timeout=0.3):
            pass  # a call for an earlier repetition of prime's change
        return watcher

    yield start
    for watcher in started:
        watcher.finish()
        assert not watcher.errors


def test_watch_notices_changes_made_behind_its_back(
    host: Host, watching: Callable[..., Watching]
) -> None:
    watcher = watching()
    assert watcher.changed_by(lambda: host.root.rpm("-e", "plumb-other"))
    assert watcher.changed_by(lambda: host.root.dnf("install", "plumb-hello-1.0"))
    assert watcher.seen[-1] == [PackageState("dnf", None), PackageState("dnf", "1.0-1")]


def test_reads_do_not_wake_the_watcher(host: Host, watching: Callable[..., Watching]) -> None:
    """rpm -q and dnf write sqlite's -shm and -wal files even to read: a watcher
    of the database directory would have every check of the agent call back."""
    watcher = watching(snapshot=lambda: None)  # counts calls, reads nothing itself
    calls = watcher.calls
    read(host.ctx, package="plumb-hello", version="latest")  # rpm -q and dnf repoquery
    host.root.dnf("history", "list")
    assert not watcher.wait_calls(calls + 1, timeout=1.0)
    host.root.rpm("-e", "plumb-other")
    assert watcher.wait_calls(calls + 1)


# --- parsers, on recorded output ---------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "version"),
    [
        ("(none):1.0-1\n", "1.0-1"),
        ("0:1.0-1\n", "1.0-1"),  # an explicit zero epoch, as repoquery prints it
        ("1:2.0-1.el9\n", "1:2.0-1.el9"),
        ("(none):5.14.0-70.el9\n(none):5.14.0-427.el9\n", "5.14.0-427.el9"),  # kernels
    ],
)
def test_rpm_version(stdout: str, version: str) -> None:
    assert _rpm_version(stdout) == version


def test_repoquery_versions_are_the_packages_own() -> None:
    out = "plumb 0:hello-2.0\nplumb-hello 1:2.0-1.el9\nplumb-hello 0:1.0-1\n"
    assert _repoquery_versions(out, "plumb-hello") == ["1:2.0-1.el9", "1.0-1"]


@pytest.mark.parametrize(
    ("stderr", "essence"),
    [
        ("Error: Unable to find a match: nosuch\n", "Error: Unable to find a match: nosuch"),
        (
            "Error: \n Problem: conflicting requests\n  - nothing provides x needed by y\n",
            "Error: \n Problem: conflicting requests\n  - nothing provides x needed by y",
        ),
        (
            "Updating Subscription Management repositories.\nError: Unable to find a match: a\n",
            "Error: Unable to find a match: a",
        ),
        ("".join(f"line {n}\n" for n in range(12)), "\n".join(f"line {n}" for n in range(4, 12))),
    ],
)
def test_dnf_error(stderr: str, essence: str) -> None:
    result = subprocess.CompletedProcess(["dnf"], 1, "", stderr)
    assert _dnf_error(result) == essence
