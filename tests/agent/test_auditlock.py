"""The audit lock file: set, lifted and shown by the real CLI, trusted only when it is ours.

Real files in a temp state dir, through ``plumb-agent audit-lock`` itself
(``agent.main.main``) where the command is what is tested.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

import pytest

from agent import auditlock
from agent.auditlock import AuditLock, LockWatch
from agent.conditions import AUDIT_LOCK
from agent.errors import UntrustedLock
from agent.main import main
from agent.state import StateDir

#: Another user's uid, for files the agent must not trust.
NOBODY = 65534


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    state.ensure()
    return state


def cli(state: StateDir, *args: str) -> int:
    return main(["--config", "/dev/null", "--state-dir", str(state.path), "audit-lock", *args])


def status_json(state: StateDir, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert cli(state, "status", "--json") == 0
    body: dict[str, object] = json.loads(capsys.readouterr().out)
    return body


def test_on_records_who_when_and_why_and_status_shows_it(
    state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    before = time.time()
    assert cli(state, "on", "--reason", "incident 4711") == 0
    said = capsys.readouterr().out
    assert re.fullmatch(
        r"audit lock on since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by uid 0 \(incident 4711\): "
        r"nothing is enforced on this host; 'plumb-agent audit-lock off' lifts it\n",
        said,
    ), said

    st = os.lstat(state.audit_lock)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid() == 0
    record = json.loads(state.audit_lock.read_text())
    assert record["uid"] == os.getuid() and record["reason"] == "incident 4711"
    assert before <= record["since"] <= time.time()

    shown = status_json(state, capsys)
    assert shown == {
        "locked": True,
        "uid": 0,
        "since": record["since"],
        "reason": "incident 4711",
        "path": str(state.audit_lock),
        "changed": False,
        "problem": None,
    }
    assert cli(state, "status") == 0
    assert capsys.readouterr().out == said


def test_on_again_keeps_the_first_lock(state: StateDir, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(state, "on", "--reason", "first") == 0
    first = state.audit_lock.read_bytes()
    assert cli(state, "on", "--reason", "second", "--json") == 0
    body = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after on's first line
    assert (body["locked"], body["changed"], body["reason"]) == (True, False, "first")
    assert state.audit_lock.read_bytes() == first


def test_off_removes_it_and_off_again_is_fine(
    state: StateDir, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(state, "on") == 0
    capsys.readouterr()
    assert cli(state, "off") == 0
    assert "audit lock off (it was on since" in capsys.readouterr().out
    assert not os.path.lexists(state.audit_lock)
    assert status_json(state, capsys)["locked"] is False

    assert cli(state, "off", "--json") == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["locked"], body["changed"]) == (False, False)


def test_on_makes_a_state_dir_that_is_not_there_yet(tmp_path: Path) -> None:
    """A host can be locked before it is enrolled: its first push then enforces nothing."""
    state = StateDir(tmp_path / "fresh")
    assert cli(state, "on") == 0
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o700
    assert auditlock.read(state.audit_lock) is not None


@pytest.mark.parametrize("args", [[], ["lock"], ["on", "--reason"], ["status", "--force"]])
def test_bad_usage_exits_2(state: StateDir, args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli(state, *args)
    assert info.value.code == 2
    assert not os.path.lexists(state.audit_lock)


# --- what is not a lock ---------------------------------------------------------


def planted_link(state: StateDir, tmp_path: Path) -> Path:
    """A symlink at the lock's path to a file that looks exactly like a lock."""
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"uid": 0, "since": 1.0, "reason": "planted"}))
    state.audit_lock.symlink_to(target)
    return target


def test_a_symlink_in_place_of_the_lock_is_not_followed_and_locks_nothing(
    state: StateDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = planted_link(state, tmp_path)
    with pytest.raises(UntrustedLock, match="is a symbolic link, not a lock file: not followed"):
        auditlock.read(state.audit_lock)
    watch = LockWatch(state.audit_lock)
    assert watch.check() is None
    assert watch.conditions() == []

    capsys.readouterr()
    assert cli(state, "status", "--json") == 1
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert body["locked"] is False and "symbolic link" in str(body["problem"])
    assert "it locks nothing" in captured.err
    assert state.audit_lock.readlink() == target  # looked at, left alone


def test_on_replaces_a_planted_symlink_and_off_removes_one_without_touching_its_target(
    state: StateDir, tmp_path: Path
) -> None:
    target = planted_link(state, tmp_path)
    written = target.read_bytes()
    assert cli(state, "on", "--reason", "real") == 0
    assert not state.audit_lock.is_symlink()
    lock = auditlock.read(state.audit_lock)
    assert lock is not None and (lock.uid, lock.reason) == (0, "real")
    assert target.read_bytes() == written

    state.audit_lock.unlink()
    state.audit_lock.symlink_to(target)
    assert cli(state, "off") == 0
    assert not os.path.lexists(state.audit_lock)
    assert target.read_bytes() == written


def test_a_symlink_in_place_of_the_temporary_is_not_written_through(
    state: StateDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state.path / ".audit-lock.json.tmp").symlink_to(victim)
    assert cli(state, "on") == 1
    assert "cannot set the audit lock" in capsys.readouterr().err
    assert victim.read_text() == "precious\n"
    assert not os.path.lexists(state.audit_lock)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.mkdir(), "is not a regular file"),
        (lambda p: os.mkfifo(p), "is not a regular file"),  # and reading it does not hang
        (
            lambda p: (p.write_text("{}"), os.chown(p, NOBODY, NOBODY)),
            f"is owned by uid {NOBODY}, not by the agent's uid 0",
        ),
        (
            lambda p: (p.write_text("{}"), os.chmod(p, 0o620)),
            "may be written by other users (mode 0620)",
        ),
    ],
    ids=["directory", "fifo", "another-users-file", "group-writable"],
)
def test_anything_but_our_own_regular_file_locks_nothing(
    state: StateDir, make: object, problem: str
) -> None:
    assert callable(make)
    make(state.audit_lock)
    with pytest.raises(UntrustedLock) as info:
        auditlock.read(state.audit_lock)
    assert problem in str(info.value)
    assert LockWatch(state.audit_lock).check() is None


def test_a_file_of_ours_that_says_nothing_usable_still_locks(state: StateDir) -> None:
    """Its being there is the lock (root's `touch audit-lock.json` means it)."""
    state.audit_lock.write_text("not json\n")
    os.chmod(state.audit_lock, 0o600)
    lock = auditlock.read(state.audit_lock)
    assert lock is not None
    assert (lock.uid, lock.since) == (0, os.stat(state.audit_lock).st_mtime)


# --- the running agent's view -------------------------------------------------------


def test_the_watch_holds_the_condition_while_the_lock_is_on(state: StateDir) -> None:
    watch = LockWatch(state.audit_lock)
    assert watch.check() is None and watch.conditions() == []

    lock, _ = auditlock.turn_on(state, "maintenance", now=1764620000.5)
    assert watch.check() == lock
    [condition] = watch.conditions()
    assert condition.name == AUDIT_LOCK == "audit_lock"
    assert condition.detail == (
        "audit lock on since 2025-12-01 20:13:20 UTC by uid 0 (maintenance): nothing is "
        "enforced on this host; 'plumb-agent audit-lock off' lifts it"
    )
    assert condition.since == 1764620000.5

    auditlock.turn_off(state)
    assert watch.check() is None
    assert watch.conditions() == []


def test_the_watch_reads_the_file_only_when_its_lstat_changes(
    state: StateDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    real_read = auditlock.read

    def counted(path: Path) -> AuditLock | None:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(auditlock, "read", counted)
    watch = LockWatch(state.audit_lock)
    for _ in range(5):
        assert watch.check() is None
    assert reads == []  # no file: an lstat each time, nothing read

    auditlock.turn_on(state, "first")
    reads.clear()  # turn_on looked first
    for _ in range(5):
        assert watch.check() is not None
    assert len(reads) == 1

    # Replaced by another lock (a new inode): read again, and the detail follows.
    state.audit_lock.unlink()
    auditlock.turn_on(state, "second")
    reads.clear()
    lock = watch.check()
    assert lock is not None and lock.reason == "second" and len(reads) == 1
    assert "(second)" in watch.conditions()[0].detail
