"""The audit lock: nothing is enforced on this host, whatever the server says.

A host owner (or someone on call, during an incident) sets it with
``plumb-agent audit-lock on [--reason TEXT]``, which leaves
``audit-lock.json`` in the state dir::

    {"uid": 0, "since": 1764620000.5, "reason": "incident 4711: hands off"}

``audit-lock off`` removes it and ``audit-lock status`` shows it. While it is
there, every run evaluates every resource as audit: read, diff, report
``drifted``; nothing is applied, so nothing can need reverting either.
Pushes, periodic and watcher-triggered runs and ``run --once`` alike: the
runner asks :meth:`LockWatch.check` at the start of each run and tells the
engine (``engine.run(audit=True)``), which owns modes. The check is one
``lstat``; the file is read again only when that changes, so a running daemon
takes a lock set or lifted at its next run without a restart, and no thread
polls for it. While it holds, the node holds the condition ``audit_lock``
(agent/conditions.py), which the server shows in ``plumb nodes``.

Which file counts: a regular file owned by the agent's own user (root) that
no other user may write, opened without following a symlink. Anything else at
that path (a symlink, a directory, a file of another user) is not a lock
(:class:`agent.errors.UntrustedLock`): it is ignored, with a warning. Were it
taken as one, whoever could plant a link there could switch enforcement off,
and with it the repair of whatever they tamper with. A trusted file whose
contents do not parse still locks: its being there is the lock, and its
owner and modification time say who and when instead.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from agent.conditions import AUDIT_LOCK, Condition, Conditions
from agent.errors import AuditLockError, UntrustedLock
from agent.state import StateDir, write_atomic

log = logging.getLogger("plumb.agent")

#: A lock file is a line of JSON; more than this was not written by `audit-lock on`.
MAX_LOCK_BYTES = 64 * 1024
#: What `audit-lock off` is, for the messages that tell how to lift the lock.
LIFT = "'plumb-agent audit-lock off' lifts it"


@dataclasses.dataclass(frozen=True)
class AuditLock:
    """Who set the lock, when, and why."""

    uid: int
    since: float  # unix seconds, by this host's clock
    reason: str = ""

    def describe(self) -> str:
        """``on since 2026-12-02 14:25:56 UTC by uid 0 (incident 4711)``."""
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        why = f" ({self.reason})" if self.reason else ""
        return f"on since {when} by uid {self.uid}{why}"

    def detail(self) -> str:
        """The node condition's sentence: what holds, what it costs, how to lift it."""
        return f"audit lock {self.describe()}: nothing is enforced on this host; {LIFT}"

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "since": self.since, "reason": self.reason}


def read(path: Path) -> AuditLock | None:
    """The lock at ``path``; None if there is none.

    Raises UntrustedLock if something else is there (see the module
    docstring), AuditLockError if it cannot be read at all.
    """
    # O_NONBLOCK: a FIFO planted there must not hang the run that looks.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedLock(
                f"{path} is a symbolic link, not a lock file: not followed"
            ) from exc
        raise AuditLockError(f"cannot read the audit lock {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        problem = _untrusted(st)
        if problem is not None:
            raise UntrustedLock(f"{path} {problem}: not a lock file this agent trusts")
        raw = os.read(fd, MAX_LOCK_BYTES)
    except OSError as exc:
        raise AuditLockError(f"cannot read the audit lock {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return _parse(raw, st, path)


def _untrusted(st: os.stat_result) -> str | None:
    """Why a file with ``st`` is not a lock (``is a directory``); None if it is one."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by the agent's uid {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"may be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _parse(raw: bytes, st: os.stat_result, path: Path) -> AuditLock:
    """The record in a trusted lock file; its owner and mtime when it says nothing usable."""
    try:
        body = json.loads(raw)
        uid, since, reason = body["uid"], body["since"], body.get("reason", "")
        if isinstance(uid, bool) or not isinstance(uid, int) or not isinstance(reason, str):
            raise TypeError("uid must be an integer, reason a string")
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise TypeError("since must be a number")
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        log.warning(
            "audit lock %s does not say who set it and when (%s); it locks all the same", path, exc
        )
        return AuditLock(uid=st.st_uid, since=st.st_mtime)
    return AuditLock(uid=uid, since=float(since), reason=reason)


def turn_on(state: StateDir, reason: str = "", now: float | None = None) -> tuple[AuditLock, bool]:
    """Set the lock (by this process's uid, now); the lock in force, and whether it was set now.

    A lock that is already on is kept as it was: its time and reason are
    those of whoever set it first. Something untrusted at the path is
    replaced (the rename replaces a symlink itself, never what it points at).
    """
    try:
        held = read(state.audit_lock)
    except UntrustedLock as exc:
        log.warning("%s; replacing it with a lock file", exc)
        held = None
    if held is not None:
        return held, False
    lock = AuditLock(uid=os.getuid(), since=time.time() if now is None else now, reason=reason)
    try:
        state.ensure()
        write_atomic(state.audit_lock, json.dumps(lock.to_json()).encode() + b"\n")
    except OSError as exc:
        raise AuditLockError(
            f"cannot set the audit lock {state.audit_lock}: {exc.strerror or exc}"
            " (only the agent's user, root, can set it)"
        ) from exc
    return lock, True


def turn_off(state: StateDir) -> AuditLock | None:
    """Lift the lock; the lock that was in force, or None if there was none.

    Whatever is at the path goes, a symlink included (unlink removes the link
    itself, never its target); a directory there is refused.
    """
    try:
        held = read(state.audit_lock)
    except UntrustedLock as exc:
        log.warning("%s; removing it", exc)
        held = None
    try:
        state.audit_lock.unlink()
    except FileNotFoundError:
        return held
    except OSError as exc:
        raise AuditLockError(
            f"cannot lift the audit lock {state.audit_lock}: {exc.strerror or exc}"
        ) from exc
    return held


class LockWatch:
    """The audit lock as a running agent sees it: checked cheaply, and a node condition.

    Thread-safe: the runner checks at the start of each run, the session's
    heartbeat when it gathers the node's conditions.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conditions = Conditions()
        self._mutex = threading.Lock()
        self._seen: tuple[int, ...] | None = None  # the lstat the lock was last read at
        self._lock: AuditLock | None = None

    def check(self) -> AuditLock | None:
        """The lock in force now (None: off); one lstat, the file read only when it changed."""
        with self._mutex:
            seen = _stat_key(self.path)
            if seen != self._seen:
                self._seen = seen
                self._changed(self._load() if seen is not None else None)
            return self._lock

    def conditions(self) -> list[Condition]:
        """``audit_lock`` while the lock is on (checked first), else nothing."""
        self.check()
        return self._conditions.current()

    def _load(self) -> AuditLock | None:
        try:
            return read(self.path)
        except UntrustedLock as exc:
            log.warning("audit lock ignored: %s (plumb-agent audit-lock off removes it)", exc)
        except AuditLockError as exc:
            log.error("audit lock ignored: %s", exc)
        return None

    def _changed(self, lock: AuditLock | None) -> None:
        before, self._lock = self._lock, lock
        if lock is not None:
            self._conditions.hold(AUDIT_LOCK, lock.detail(), since=lock.since)
            if lock != before:
                log.warning("%s", lock.detail())
        elif self._conditions.clear(AUDIT_LOCK):
            log.info("audit lock lifted: resources are enforced again as their catalog says")


def _stat_key(path: Path) -> tuple[int, ...] | None:
    """What changes whenever the file at ``path`` is replaced, rewritten or re-permitted."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (-1, exc.errno or 0)  # not readable now: read (and say why) once
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode, st.st_uid)
