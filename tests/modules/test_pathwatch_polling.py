"""watch_paths when inotify will not watch everything: it polls the rest, and says so.

Real limits, not a fake inotify: each test runs watch_paths in a child that
is root of a user namespace of its own (:mod:`tests.inotify_limits`), where
the test sets how many inotify watches (or instances) the child may have.
Everything the child watches is in the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.inotify_limits import Child, look

POLL_S = 0.1
NO_WATCH = (
    "inotify would not take a watch (No space left on device: fs.inotify.max_user_watches reached)"
)
NO_INOTIFY = (
    "inotify could not be started "
    "(Too many open files: fs.inotify.max_user_instances or the open-file limit reached)"
)


@dataclasses.dataclass
class Polling:
    """A child running watch_paths, and the host paths it looks at on each on_change."""

    child: Child
    paths: list[Path]

    def said(self) -> list[str | None]:
        """Every sentence watch_degraded was called with, in order."""
        return self.child.said("degraded")

    def saying(self, *expected: str | None) -> bool:
        """Whether watch_degraded has been called with ``expected`` (and nothing else), in time."""
        return self.child.wait_for(lambda: self.said() == list(expected))

    def changed_by(self, action: Callable[[], object]) -> bool:
        """Whether, after ``action``, an on_change call comes that saw its outcome."""
        before = self.child.count()
        action()
        outcome = json.loads(json.dumps([look(path) for path in self.paths]))
        return self.child.wait_for(lambda: outcome in self.child.said("change", before))

    def calls(self) -> int:
        return len(self.child.said("change"))


@pytest.fixture
def polling(tmp_path: Path) -> Iterator[Callable[..., Polling]]:
    with contextlib.ExitStack() as children:

        def start(
            *paths: str,
            contents_of: tuple[str, ...] = (),
            watches: int,
            instances: int | None = None,
        ) -> Polling:
            spec = json.dumps({"paths": paths, "contents_of": contents_of})
            args = [str(tmp_path), str(POLL_S), spec]
            child = children.enter_context(
                Child("tests.modules.pathwatch_child", args, watches=watches, instances=instances)
            )
            return Polling(child, [tmp_path / path.lstrip("/") for path in (*paths, *contents_of)])

        yield start


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/motd").write_text("hello\n")
    return tmp_path / "etc"


def test_with_no_watch_left_every_path_is_polled_and_said(
    tmp_path: Path, etc: Path, polling: Callable[..., Polling]
) -> None:
    motd, rpm = etc / "motd", tmp_path / "var/lib/rpm"
    rpm.mkdir(parents=True)
    (rpm / "rpmdb.sqlite").write_text("v1")
    watcher = polling("/etc/motd", contents_of=("/var/lib/rpm",), watches=0)
    assert watcher.saying(f"polling {motd}, {rpm} every 0.1 s: {NO_WATCH}")

    assert watcher.changed_by(lambda: motd.write_text("edited in place\n"))
    assert watcher.changed_by(lambda: motd.chmod(0o600))

    def replace() -> None:  # an atomic replace: a new inode, the same size and mode
        (etc / ".motd.new").write_text("edited again\n")
        os.chmod(etc / ".motd.new", 0o600)
        os.replace(etc / ".motd.new", motd)

    assert watcher.changed_by(replace)
    assert watcher.changed_by(motd.unlink)
    assert watcher.changed_by(lambda: motd.write_text("back\n"))
    assert watcher.changed_by(lambda: (rpm / "rpmdb.sqlite").write_text("v2"))  # an entry's own
    assert watcher.changed_by(lambda: (rpm / "rpmdb.sqlite-wal").write_text("wal"))  # a new one
    assert watcher.said() == [f"polling {motd}, {rpm} every 0.1 s: {NO_WATCH}"]  # said once


def test_with_one_watch_left_only_the_rest_is_polled(
    tmp_path: Path, etc: Path, polling: Callable[..., Polling]
) -> None:
    (tmp_path / "srv").mkdir()
    conf = tmp_path / "srv/app.conf"
    conf.write_text("port = 80\n")
    watcher = polling("/etc/motd", "/srv/app.conf", watches=1)
    assert watcher.saying(f"polling {conf} every 0.1 s: {NO_WATCH}")  # /etc took the watch

    assert watcher.changed_by(lambda: (etc / "motd").write_text("watched\n"))
    assert watcher.changed_by(lambda: conf.write_text("port = 8080\n"))


def test_polling_ends_once_inotify_takes_the_watches(
    etc: Path, polling: Callable[..., Polling]
) -> None:
    watcher = polling("/etc/motd", watches=0)
    polled = f"polling {etc / 'motd'} every 0.1 s: {NO_WATCH}"
    assert watcher.saying(polled)

    watcher.child.send(watches=100)  # the operator raises the limit
    assert watcher.saying(polled, None)
    assert watcher.changed_by(lambda: (etc / "motd").write_text("watched again\n"))


def test_without_inotify_everything_is_polled_until_it_can_be_started(
    tmp_path: Path, etc: Path, polling: Callable[..., Polling]
) -> None:
    (tmp_path / "var/lib/rpm").mkdir(parents=True)
    watcher = polling("/etc/motd", contents_of=("/var/lib/rpm",), watches=100, instances=0)
    polled = f"polling {etc / 'motd'}, {tmp_path / 'var/lib/rpm'} every 0.1 s: {NO_INOTIFY}"
    assert watcher.saying(polled)
    assert watcher.changed_by(lambda: (etc / "motd").write_text("polled\n"))
    assert watcher.changed_by(lambda: (tmp_path / "var/lib/rpm/Packages").write_text("x"))

    watcher.child.send(instances=1)
    assert watcher.saying(polled, None)
    assert watcher.changed_by(lambda: (etc / "motd").write_text("watched\n"))


def test_polling_follows_no_planted_symlink(
    tmp_path: Path, etc: Path, polling: Callable[..., Polling]
) -> None:
    """alice's (nobody's) ~/.ssh swapped for her symlink to root's .ssh: root's is not polled."""
    (tmp_path / "root/.ssh").mkdir(parents=True)
    keys = tmp_path / "root/.ssh/authorized_keys"
    keys.write_text("root's key\n")
    alice = tmp_path / "home/alice"
    alice.mkdir(parents=True)
    os.chown(alice, 65534, 65534)
    (alice / ".ssh").symlink_to("../../root/.ssh")
    os.chown(alice / ".ssh", 65534, 65534, follow_symlinks=False)
    watcher = polling("/home/alice/.ssh/authorized_keys", "/etc/motd", watches=0)
    ssh = alice / ".ssh/authorized_keys"
    assert watcher.saying(f"polling {etc / 'motd'}, {ssh} every 0.1 s: {NO_WATCH}")

    keys.write_text("root's new key, longer\n")
    # Not synchronisation: the absence of a call, given ample time (ten polls) to make one.
    assert not watcher.child.wait_for(lambda: watcher.calls() > 0, timeout=1.0)
    assert watcher.changed_by(lambda: (etc / "motd").write_text("polled all along\n"))

    def real_directory() -> None:
        (alice / ".ssh").unlink()
        (alice / ".ssh").mkdir()

    assert watcher.changed_by(real_directory)
    assert watcher.changed_by(lambda: ssh.write_text("hers\n"))


def test_a_long_list_of_polled_paths_is_cut_short(
    etc: Path, polling: Callable[..., Polling]
) -> None:
    names = [f"/etc/app{number}.conf" for number in range(7)]
    watcher = polling(*names, watches=0)
    first = ", ".join(str(etc / f"app{number}.conf") for number in range(5))
    assert watcher.saying(f"polling {first} and 2 more every 0.1 s: {NO_WATCH}")
