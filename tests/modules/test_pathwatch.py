"""watch_paths on real inotify: the cases other kinds rely on (dpkg's status file, rpm's database).

The file kind's own watch tests (tests/modules/test_file.py) cover files,
directories and links managed as resources; these cover what the package
and service kinds will watch, through the same shared harness.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from modules.base import Context
from modules.pathwatch import watch_paths
from tests.modules.watching import Watching


@dataclasses.dataclass
class Paths:
    """watch_paths in the shape of Kind.watch, so the shared Watching harness can drive it.

    Its "specs" are absolute paths, as a spec would give them.
    """

    contents_of: Sequence[str] = ()

    def watch(
        self,
        ctx: Context,
        specs: Sequence[str],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        contents_of = [ctx.host_path(path) for path in self.contents_of]
        paths = [ctx.host_path(path) for path in specs]
        watch_paths(ctx, paths, on_change, stop, contents_of=contents_of)


def describe(path: Path) -> Any:
    """What is at ``path``, without following a link there; a directory with its entries."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        entries = sorted((child.name, describe(child)) for child in path.iterdir())
        return ("directory", stat.S_IMODE(st.st_mode), entries)
    return ("file", stat.S_IMODE(st.st_mode), path.read_bytes())


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(root=tmp_path, log=logging.getLogger("test.pathwatch"))


@pytest.fixture
def watching(ctx: Context) -> Iterator[Callable[..., Watching]]:
    started: list[Watching] = []

    def start(
        *paths: str, contents_of: Sequence[str] = (), snapshot: Callable[[], Any]
    ) -> Watching:
        watcher = Watching(Paths(contents_of), ctx, list(paths), snapshot)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.finish()
        assert not watcher.errors, watcher.errors


def test_dpkg_status_replaced_by_rename(tmp_path: Path, watching: Callable[..., Watching]) -> None:
    """dpkg writes status-new and renames it over status; status-old is a neighbour."""
    dpkg = tmp_path / "var/lib/dpkg"
    dpkg.mkdir(parents=True)
    status = dpkg / "status"
    status.write_text("Package: a\n")
    watcher = watching("/var/lib/dpkg/status", snapshot=lambda: describe(status))
    watcher.prime(lambda: os.utime(status))

    def dpkg_writes(text: str) -> None:
        (dpkg / "status-new").write_text(text)
        os.replace(dpkg / "status-new", status)

    assert watcher.changed_by(lambda: dpkg_writes("Package: a\n\nPackage: b\n"))
    assert watcher.changed_by(lambda: dpkg_writes("Package: b\n"))  # still watched
    assert watcher.changed_by(lambda: status.write_text("edited in place\n"))

    calls = watcher.settled()
    (dpkg / "status-old").write_text("backup")
    (dpkg / "lock").write_text("")
    # Not synchronisation: the absence of a call, given ample time to make one.
    assert not watcher.wait_calls(calls + 1, timeout=0.5)


def test_contents_of_a_directory(tmp_path: Path, watching: Callable[..., Watching]) -> None:
    rpm = tmp_path / "var/lib/rpm"
    (rpm / "nested").mkdir(parents=True)
    database = rpm / "rpmdb.sqlite"
    database.write_bytes(b"v1")
    watcher = watching(contents_of=["/var/lib/rpm"], snapshot=lambda: describe(rpm))
    watcher.prime(lambda: os.utime(database))

    assert watcher.changed_by(lambda: database.write_bytes(b"v2"))  # any entry, no name given
    assert watcher.changed_by(lambda: (rpm / "rpmdb.sqlite-wal").write_bytes(b"wal"))
    assert watcher.changed_by((rpm / "rpmdb.sqlite-wal").unlink)
    assert watcher.changed_by(lambda: database.chmod(0o600))

    calls = watcher.settled()
    (rpm / "nested/deeper.txt").write_text("one level only")
    assert not watcher.wait_calls(calls + 1, timeout=0.5)


def test_contents_of_a_replaced_directory_are_watched_again(
    tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    lib = tmp_path / "var/lib"
    (lib / "rpm").mkdir(parents=True)
    (lib / "rpm/rpmdb.sqlite").write_bytes(b"v1")
    watcher = watching(contents_of=["/var/lib/rpm"], snapshot=lambda: describe(lib / "rpm"))
    watcher.prime(lambda: os.utime(lib / "rpm/rpmdb.sqlite"))

    def rebuild() -> None:  # what `rpmdb --rebuilddb` amounts to
        (lib / "rpmrebuilddb").mkdir()
        (lib / "rpmrebuilddb/rpmdb.sqlite").write_bytes(b"rebuilt")
        os.rename(lib / "rpm", lib / "rpm-old")
        os.rename(lib / "rpmrebuilddb", lib / "rpm")

    assert watcher.changed_by(rebuild)
    assert watcher.changed_by(lambda: (lib / "rpm/rpmdb.sqlite").write_bytes(b"v3"))
    calls = watcher.settled()
    (lib / "rpm-old/rpmdb.sqlite").write_bytes(b"the old one is not watched")
    assert not watcher.wait_calls(calls + 1, timeout=0.5)


def test_contents_of_a_missing_directory(tmp_path: Path, watching: Callable[..., Watching]) -> None:
    (tmp_path / "var").mkdir()
    sentinel = tmp_path / "var/sentinel"
    sentinel.write_text("x")
    rpm = tmp_path / "var/lib/rpm"
    watcher = watching(
        "/var/sentinel", contents_of=["/var/lib/rpm"], snapshot=lambda: describe(tmp_path / "var")
    )
    watcher.prime(lambda: os.utime(sentinel))

    assert watcher.changed_by(lambda: rpm.mkdir(parents=True))
    assert watcher.changed_by(lambda: (rpm / "rpmdb.sqlite").write_bytes(b"v1"))


def test_contents_of_a_symlinked_directory(
    tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    """As on Fedora, where /var/lib/rpm links to /usr/lib/sysimage/rpm."""
    sysimage = tmp_path / "usr/lib/sysimage"
    (sysimage / "rpm").mkdir(parents=True)
    (sysimage / "rpm-next").mkdir()
    (tmp_path / "var/lib").mkdir(parents=True)
    link = tmp_path / "var/lib/rpm"
    link.symlink_to("../../usr/lib/sysimage/rpm")
    watcher = watching(contents_of=["/var/lib/rpm"], snapshot=lambda: describe(link.resolve()))
    watcher.prime(lambda: os.utime(sysimage / "rpm"))

    assert watcher.changed_by(lambda: (sysimage / "rpm/rpmdb.sqlite").write_bytes(b"v1"))

    def repoint() -> None:
        (tmp_path / "var/lib/.new").symlink_to("../../usr/lib/sysimage/rpm-next")
        os.replace(tmp_path / "var/lib/.new", link)

    assert watcher.changed_by(repoint)
    assert watcher.changed_by(lambda: (sysimage / "rpm-next/rpmdb.sqlite").write_bytes(b"v2"))


# --- symlinks a user planted among the parents ---------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """alice's (nobody's) ~/.ssh swapped for her symlink to root's .ssh."""
    (tmp_path / "root/.ssh").mkdir(parents=True)
    (tmp_path / "root/.ssh/authorized_keys").write_text("root's key\n")
    alice = tmp_path / "home/alice"
    alice.mkdir(parents=True)
    os.chown(alice, 65534, 65534)
    (alice / ".ssh").symlink_to("../../root/.ssh")
    os.chown(alice / ".ssh", 65534, 65534, follow_symlinks=False)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/motd").write_text("x")
    return alice


def test_a_planted_parent_symlink_is_not_watched_through(
    tmp_path: Path, planted: Path, watching: Callable[..., Watching]
) -> None:
    """Root's directory is not watched for her, and her own directory is, once she has one."""
    keys = tmp_path / "root/.ssh/authorized_keys"
    motd = tmp_path / "etc/motd"
    watcher = watching(
        "/home/alice/.ssh/authorized_keys", "/etc/motd", snapshot=lambda: describe(planted)
    )
    watcher.prime(lambda: os.utime(motd))
    calls = watcher.settled()
    keys.write_text("root's new key\n")
    os.utime(keys)
    # Not synchronisation: the absence of a call, given ample time to make one.
    assert not watcher.wait_calls(calls + 1, timeout=0.5)

    def real_directory() -> None:
        (planted / ".ssh").unlink()
        (planted / ".ssh").mkdir()

    assert watcher.changed_by(real_directory)
    assert watcher.changed_by(lambda: (planted / ".ssh/authorized_keys").write_text("hers\n"))


def test_a_trusted_symlink_is_watched_through(
    tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    """Merged /usr: root's /lib -> usr/lib, so /lib/x is watched in /usr/lib."""
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    unit = tmp_path / "usr/lib/web.service"
    unit.write_text("[Unit]\n")
    watcher = watching("/lib/web.service", snapshot=lambda: describe(unit))
    watcher.prime(lambda: os.utime(unit))
    assert watcher.changed_by(lambda: unit.write_text("[Service]\n"))
