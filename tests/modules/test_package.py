"""The package kind: parse and diff from tables; provider choice from os-release.

The providers themselves run for real: apt inside a booted systemd host
(tests/system), dnf with --installroot into a throwaway root (test_package_dnf.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from modules import registry
from modules.base import Change, Context
from modules.errors import ApplyError, Busy, Unavailable
from modules.package import (
    PackageSpec,
    PackageState,
    _refusal,
    os_family,
    os_release,
    provider_for,
    version_matches,
)
from modules.spec import Presence
from tests.modules.cases import Fails, check_parse

KIND = registry.get("package")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"package": "hello"}, PackageSpec("hello")),
        ({"package": "hello", "version": "2.0-1"}, PackageSpec("hello", version="2.0-1")),
        ({"package": "hello", "version": "latest"}, PackageSpec("hello", version="latest")),
        ({"package": "libc6", "version": "1:2.36"}, PackageSpec("libc6", version="1:2.36")),
        ({"package": "g++", "state": "absent"}, PackageSpec("g++", Presence.ABSENT)),
        ({}, Fails("package", "required field is missing")),
        ({"package": "-oops"}, Fails("package", "not a valid package name")),
        ({"package": "a b"}, Fails("package", "not a valid package name")),
        ({"package": "hello", "version": 1.2}, Fails("version", "YAML reads 1.2 as a number")),
        (
            {"package": "hello", "version": "1 2"},
            Fails("version", 'expected a version or "latest"'),
        ),
        (
            {"package": "hello", "state": "absent", "version": "1.0"},
            Fails("version", "not allowed with state: absent"),
        ),
        (
            {"package": "hello", "state": "purged"},
            Fails("state", "expected one of present, absent"),
        ),
        ({"package": "hello", "ensure": "present"}, Fails("ensure", "unknown field")),
    ],
)
def test_parse(raw: dict[str, Any], expected: object) -> None:
    check_parse(KIND, raw, expected)


def state(
    installed: str | None, candidate: str | None = None, offered: bool = True
) -> PackageState:
    return PackageState("apt", installed, candidate, offered)


@pytest.mark.parametrize(
    ("spec", "observed", "changes"),
    [
        (PackageSpec("a"), state("1.0"), []),
        (PackageSpec("a"), state(None), [Change("state", "absent", "present")]),
        (PackageSpec("a", Presence.ABSENT), state(None), []),
        (PackageSpec("a", Presence.ABSENT), state("1.0"), [Change("state", "1.0", "absent")]),
        (PackageSpec("a", version="2.0"), state("2.0"), []),
        (PackageSpec("a", version="2.0"), state("2.0-1"), []),  # rpm release left out
        (PackageSpec("a", version="2.0"), state("1:2.0"), []),  # epoch left out
        (PackageSpec("a", version="1.0"), state("2.0"), [Change("version", "2.0", "1.0")]),
        (PackageSpec("a", version="2.0"), state(None), [Change("version", "absent", "2.0")]),
        (
            PackageSpec("a", version="9.9"),
            state("1.0", offered=False),
            [Change("version", "1.0", "9.9 (not offered)")],
        ),
        (PackageSpec("a", version="latest"), state("2.0", "2.0"), []),
        (
            PackageSpec("a", version="latest"),
            state("1.0", "2.0"),
            [Change("version", "1.0", "2.0 (latest)")],
        ),
        (PackageSpec("a", version="latest"), state("3.0", None), []),  # nothing offered: keep
        (
            PackageSpec("a", version="latest"),
            state(None, None),
            [Change("version", "absent", "latest (none offered)")],
        ),
    ],
)
def test_diff(spec: PackageSpec, observed: PackageState, changes: list[Change]) -> None:
    assert KIND.diff(spec, observed) == changes


@pytest.mark.parametrize(
    ("installed", "pin", "matches"),
    [
        ("2.0-1", "2.0-1", True),
        ("2.0-1", "2.0", True),
        ("1:2.0-1", "2.0-1", True),
        ("2.0-1", "2.0-2", False),
        ("2.0.1", "2.0", False),
        ("12.0", "2.0", False),
    ],
)
def test_version_matches(installed: str, pin: str, matches: bool) -> None:
    assert version_matches(installed, pin) is matches


@pytest.mark.parametrize(
    ("text", "family"),
    [
        ('ID=debian\nVERSION_ID="12"\n', "debian"),
        ("ID=ubuntu\nID_LIKE=debian\n", "debian"),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "redhat"),
        ("ID=fedora\n", "redhat"),
        ("ID=alpine\n", None),
        ("", None),
    ],
)
def test_family_from_os_release(tmp_path: Path, text: str, family: str | None) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text(text)
    assert os_family(os_release(tmp_path)) == family


def test_no_provider_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=alpine\nPRETTY_NAME="Alpine Linux v3.20"\n')
    with pytest.raises(Unavailable, match=r"no package provider for this host \(Alpine Linux"):
        provider_for(Context(root=tmp_path))


def test_apt_refuses_a_sandbox_root(tmp_path: Path) -> None:
    """dpkg --root would run maintainer scripts without the host's services."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=debian\n")
    with pytest.raises(Unavailable, match="apt manages the host's own packages only"):
        provider_for(Context(root=tmp_path))


@pytest.mark.parametrize(
    ("stderr", "busy"),
    [
        # apt-get while another apt holds the frontend lock (recorded in a booted host)
        (
            "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 94 "
            "(apt-get)\nE: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-"
            "frontend), is another process using it?\n",
            True,
        ),
        # apt-get update while another holds the lists
        ("E: Could not get lock /var/lib/apt/lists/lock. It is held by process 7 (apt)\n", True),
        # dpkg --configure -a by hand while apt runs dpkg, or dpkg itself runs
        ("dpkg: error: dpkg frontend lock was locked by another process with pid 94\n", True),
        ("dpkg: error: dpkg database lock was locked by another process with pid 165\n", True),
        # rpm / dnf while another rpm transaction runs
        ("error: can't create transaction lock on /var/lib/rpm/.rpm.lock (Resource busy)\n", True),
        ("E: Unable to locate package nosuch\n", False),
        ("dpkg: error processing package x (--configure):\n installed x script failed\n", False),
    ],
)
def test_a_held_lock_is_busy_and_anything_else_the_kinds_error(stderr: str, busy: bool) -> None:
    result = subprocess.CompletedProcess(["apt-get"], 100, "", stderr)
    error = _refusal(result, ApplyError, "apt-get install failed (exit 100)", stderr)
    assert type(error) is (Busy if busy else ApplyError)
    assert str(error).startswith("apt-get install failed (exit 100)")
    assert ("the package manager is busy (its lock is held)" in str(error)) is busy
