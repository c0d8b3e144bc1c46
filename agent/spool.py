"""Reports waiting for the server's acknowledgement, kept in SQLite.

A report is written here (and fsynced) before anything tries to send it, and
deleted only when the server acks its id. Resending is always safe: the
server ingests by id, once.

Each report gets the node's next **sequence number** as it is spooled, in
the same transaction, so the numbers follow the order runs ended whatever
the wall clock did, and survive restarts (``meta.next_sequence``). The server
orders a node's reports by it. Should this spool be lost, the server's
Welcome says the highest number it has stored, and :meth:`Spool.at_least`
moves the count above it.

Reports go out in sequence order. One larger than any server takes is
**set aside** at once into the ``rejected`` table (kept for inspection,
counted by ``plumb-agent status``). One the server refuses anyway (the stream
ends with RESOURCE_EXHAUSTED or INVALID_ARGUMENT while it was the largest one
in flight) is counted; it is sent after every other one from then on, and
after ``REFUSALS_BEFORE_ASIDE`` refusals it is set aside too, so it can never
block the reports behind it.

A damaged spool never stops the agent. When ``spool.db`` is not a sound
database — not SQLite at all, failing ``PRAGMA quick_check``, without the
reports table an agent creates in it, not a regular file, or empty (0 bytes:
SQLite would take that for a new database, but the agent creates its spool
with the table in it, so an empty file means what it held is gone) — it is
set aside as ``spool.db.damaged-<UTC time>`` (with its ``-wal`` and ``-shm``),
a fresh spool takes its place, one ERROR line says so, and the loss goes to
the server (agent/losses.py): how many reports were in it when that can still
be read, "unknown" otherwise. This is checked when the spool is opened (the
daemon's and ``run --once``'s start) and whenever an operation finds the
database corrupt. Other errors (a full disk, a read-only file system, a
lock held too long) are :class:`SpoolError`: setting a sound database aside
would lose reports for nothing.

A spool that cannot be written (nor, on a full disk, even opened: SQLite
must create its ``-wal`` and ``-shm`` first) never loses a report either.
What it cannot take waits in memory — the report, numbered on from the last
sequence known (the spool's, or the server's Welcome), or an ack it could not
delete — is sent from there like any other, and written into the spool by
:meth:`Spool.catch_up` once it can be (the daemon retries every few seconds;
every operation tries first). The state dir holds the condition
``state_dir_unwritable`` meanwhile (agent/state.py). At most
:data:`BACKLOG_REPORTS` reports (:data:`BACKLOG_BYTES`) wait so: beyond that
the oldest is dropped and counted as lost. A restart loses what waited in
memory and was not acknowledged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

from agent.errors import SpoolError
from agent.losses import SPOOLED_REPORTS, UNKNOWN, LossLog
from agent.state import set_aside

log = logging.getLogger("plumb.agent")

_T = TypeVar("_T")

#: After this many refusals by the server a report is set aside.
REFUSALS_BEFORE_ASIDE = 3
#: Reports kept in memory while the spool cannot be written, and their bytes.
BACKLOG_REPORTS = 500
BACKLOG_BYTES = 32 * 2**20

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS reports "
    "(id TEXT PRIMARY KEY, created REAL NOT NULL, body BLOB NOT NULL, "
    "sequence INTEGER, refusals INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rejected "
    "(id TEXT PRIMARY KEY, set_aside REAL NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL)",
    # The intent journal: a change about to be applied, by which run (agent/runner.py).
    "CREATE TABLE IF NOT EXISTS intents "
    "(run TEXT NOT NULL, resource TEXT NOT NULL, at REAL NOT NULL, run_meta TEXT NOT NULL, "
    "changes TEXT NOT NULL, PRIMARY KEY (run, resource))",
)
# Columns added since the first spools, which had only id, created and body.
_COLUMNS = {"sequence": "INTEGER", "refusals": "INTEGER NOT NULL DEFAULT 0"}
#: SQLite's own files beside a database, set aside with it.
_SIDECARS = ("-wal", "-shm", "-journal")
#: sqlite3 error codes that mean the file itself is damaged, not its surroundings.
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class Damaged(Exception):
    """The spool file is not a sound database; the message says what is wrong."""


@dataclasses.dataclass
class _Held:
    """A report the spool could not take, waiting in memory."""

    id: str
    build: Callable[[int], bytes]
    sequence: int | None = None  # None until a sequence is known to number it
    body: bytes = b""  # build(sequence), once numbered
    refusals: int = 0


class Spool:
    def __init__(
        self,
        path: Path,
        losses: LossLog | None = None,
        unwritable: Callable[[str], None] | None = None,
    ) -> None:
        """Open the spool at ``path``, setting a damaged one aside (see the module docstring).

        ``losses`` is where a loss is recorded; None: the state dir holding
        ``path``. ``unwritable(why)`` is told whenever the spool cannot be
        written (the state dir's condition).
        """
        self.path = path
        self._losses = losses
        self._unwritable = unwritable or (lambda why: None)
        self._recovering = threading.Lock()
        self._memory = threading.Lock()  # guards the four below
        self._held: list[_Held] = []
        self._deleted: set[str] = set()  # acked, but not yet deleted from the spool
        self._next: int | None = None  # the next sequence, as last known
        self._catching_up = threading.Lock()
        try:
            with self._recovering:
                problem = _problem(path)
                if problem is not None:
                    self._replace(problem)
                elif not path.exists():
                    _create(path)
            self._next = self._do(_upgrade)
        except SpoolError as exc:  # reports wait in memory until it can be opened
            self._cannot_write(exc)

    def add(self, report_id: str, build: Callable[[int], bytes]) -> int:
        """Spool the report ``build(sequence)`` makes with the next sequence number; that number.

        One transaction, which also ends the run's intents (the report says
        what became of them): a number is never given twice nor skipped by a
        crash, and an intent is never both journalled and reported. A spool
        that cannot be written keeps it in memory (0: no number known yet).
        """

        def add(db: sqlite3.Connection) -> int:
            sequence = _next_sequence(db)
            _insert(db, report_id, build(sequence), sequence)
            return sequence

        if self.catch_up():  # never past reports that wait in memory
            try:
                sequence = self._do(add)
            except SpoolError as exc:
                self._cannot_write(exc)
            else:
                with self._memory:
                    self._next = sequence + 1
                return sequence
        return self._hold(report_id, build)

    def catch_up(self) -> bool:
        """Write what waits in memory into the spool if it can be; whether nothing waits now."""
        with self._catching_up:
            with self._memory:
                held, deleted, known = list(self._held), set(self._deleted), self._next
            if not held and not deleted:
                return True

            def write(db: sqlite3.Connection) -> int:
                following = max(_next_sequence(db), known or 0)
                for report in held:
                    sequence, body = report.sequence, report.body
                    if sequence is None:  # numbered from the spool's count, now it can be read
                        sequence, body = following, report.build(following)
                    following = max(following, sequence + 1)
                    _insert(db, report.id, body, sequence)
                db.executemany("DELETE FROM reports WHERE id = ?", [(i,) for i in deleted])
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next_sequence', ?)", (following,))
                return following

            try:
                if not self.path.exists():  # never made: the disk was full from the start
                    _create(self.path)
                following = self._do(write)
            except SpoolError as exc:
                self._cannot_write(exc)
                return False
            with self._memory:
                written = {report.id for report in held}
                self._held = [r for r in self._held if r.id not in written]
                self._deleted -= deleted
                self._next = max(following, self._next or 0)
                return not self._held and not self._deleted

    def _hold(self, report_id: str, build: Callable[[int], bytes]) -> int:
        with self._memory:
            report = _Held(report_id, build)
            self._held.append(report)
            self._number()
            dropped = self._bound()
        for old in dropped:
            self._dropped(old.id, "the oldest beyond the bound of reports waiting in memory")
        return report.sequence or 0

    def _number(self) -> None:
        """Number the reports waiting in memory that have no sequence yet (under _memory)."""
        for report in self._held:
            if report.sequence is None and self._next is not None:
                report.sequence, report.body = self._next, report.build(self._next)
                self._next += 1

    def _bound(self) -> list[_Held]:
        """Drop the oldest reports beyond the backlog's bounds (under _memory); those dropped."""
        dropped = []
        while len(self._held) > 1 and (
            len(self._held) > BACKLOG_REPORTS
            or sum(len(r.body) for r in self._held) > BACKLOG_BYTES
        ):
            dropped.append(self._held.pop(0))
        return dropped

    def _cannot_write(self, exc: SpoolError) -> None:
        self._unwritable(f"{self.path.name}: {_cause(exc)}")

    def intend(self, run: str, resource: str, run_meta: str, changes: str) -> None:
        """Journal that ``run`` is about to apply ``changes`` (JSON) to ``resource``; fsynced."""
        self._write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO intents VALUES (?, ?, ?, ?, ?)",
                (run, resource, time.time(), run_meta, changes),
            )
        )

    def intents(self) -> list[tuple[str, str, str, str]]:
        """Journalled changes whose run never spooled its report: (run, resource, meta, changes).

        Reports waiting in memory are written first: their runs' intents are then ended.
        """
        self.catch_up()
        return self._do(
            lambda db: [
                (str(r), str(res), str(m), str(c))
                for r, res, m, c in db.execute(
                    "SELECT run, resource, run_meta, changes FROM intents ORDER BY at"
                )
            ]
        )

    def at_least(self, last_sequence: int) -> None:
        """The server has stored reports up to ``last_sequence``: number new ones above it."""
        with self._memory:
            if self._next is None or self._next <= last_sequence:
                self._next = last_sequence + 1
            self._number()

        def raise_to(db: sqlite3.Connection) -> None:
            if _next_sequence(db) <= last_sequence:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('next_sequence', ?)", (last_sequence + 1,)
                )

        with contextlib.suppress(SpoolError):  # said by _write; the memory's count goes on
            self._write(raise_to)

    def pending(self) -> list[tuple[str, bytes]]:
        """What to send, oldest first; reports the server refused come last.

        What waits in memory too (after what the spool holds: it is newer),
        and only what the spool holds when it cannot be read.
        """
        self.catch_up()
        try:
            stored = self._do(
                lambda db: [
                    (str(i), bytes(b), int(n))
                    for i, b, n in db.execute(
                        "SELECT id, body, refusals FROM reports "
                        "ORDER BY refusals > 0, COALESCE(sequence, 0), created, id"
                    )
                ]
            )
        except SpoolError as exc:
            self._cannot_write(exc)
            stored = []
        with self._memory:
            both = [r for r in stored if r[0] not in self._deleted] + [
                (r.id, r.body, r.refusals) for r in self._held if r.sequence is not None
            ]
        return [(i, body) for i, body, refusals in sorted(both, key=lambda r: r[2] > 0)]

    def ack(self, report_id: str) -> None:
        """The server stored ``report_id``: forget it (in memory until the spool can be written)."""
        with self._memory:
            held = len(self._held)
            self._held = [r for r in self._held if r.id != report_id]
            if len(self._held) < held:
                return
        try:
            self._write(lambda db: db.execute("DELETE FROM reports WHERE id = ?", (report_id,)))
        except SpoolError:  # said by _write: deleted once it can be
            with self._memory:
                self._deleted.add(report_id)

    def refused(self, report_id: str, reason: str) -> bool:
        """The server refused ``report_id``; True if it has now been set aside."""
        if (held := self._held_report(report_id)) is not None:
            held.refusals += 1
            if held.refusals < REFUSALS_BEFORE_ASIDE:
                return False
            self._drop_held(report_id, reason)
            return True

        def refuse(db: sqlite3.Connection) -> bool:
            db.execute("UPDATE reports SET refusals = refusals + 1 WHERE id = ?", (report_id,))
            row = db.execute("SELECT refusals FROM reports WHERE id = ?", (report_id,)).fetchone()
            if row is None or row[0] < REFUSALS_BEFORE_ASIDE:
                return False
            _set_aside(db, report_id, reason)
            return True

        try:
            return self._write(refuse)
        except SpoolError:  # said by _write: refused again on a later session
            return False

    def set_aside(self, report_id: str, reason: str) -> None:
        """Keep ``report_id`` for inspection, never to be sent: no server could take it."""
        if self._held_report(report_id) is not None:
            self._drop_held(report_id, reason)
            return
        with contextlib.suppress(SpoolError):  # said by _write: tried again on a later session
            self._write(lambda db: _set_aside(db, report_id, reason))

    def count(self) -> int:
        """Reports not acknowledged yet: in the spool (as far as it can be read) and in memory."""
        with self._memory:
            deleted, held = list(self._deleted), len(self._held)

        def stored(db: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(deleted))
            query = f"SELECT count(*) FROM reports WHERE id NOT IN ({marks})"
            return int(db.execute(query, deleted).fetchone()[0])

        try:
            return self._do(stored) + held
        except SpoolError as exc:
            self._cannot_write(exc)
            return held

    def in_memory(self) -> int:
        """Reports waiting in memory for the spool (lost if the process ends now)."""
        with self._memory:
            return len(self._held)

    def rejected(self) -> int:
        """How many reports were set aside because no server takes them."""
        return self._do(lambda db: int(db.execute("SELECT count(*) FROM rejected").fetchone()[0]))

    def _held_report(self, report_id: str) -> _Held | None:
        with self._memory:
            return next((r for r in self._held if r.id == report_id), None)

    def _drop_held(self, report_id: str, reason: str) -> None:
        """A report waiting in memory that no server takes: it cannot even be kept aside."""
        with self._memory:
            self._held = [r for r in self._held if r.id != report_id]
        self._dropped(report_id, f"refused ({reason}) while the spool could not keep it aside")

    def _write(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        """:meth:`_do` for a write: a spool that cannot be written is said (the condition)."""
        try:
            return self._do(operation)
        except SpoolError as exc:
            self._cannot_write(exc)
            raise

    def _do(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        """``operation`` in a transaction; once more on a fresh spool if this one is damaged."""
        try:
            with self._db() as db:
                return operation(db)
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            vanished = code == sqlite3.SQLITE_CANTOPEN and not self.path.exists()
            if code not in _DAMAGED and not vanished:
                raise SpoolError(f"report spool {self.path}: {exc}") from exc
            with self._recovering:
                # Another thread may have set it aside already: look again.
                if not self.path.exists():
                    _create(self.path)
                    self._lost(UNKNOWN, "it disappeared while the agent was using it", None)
                elif (problem := _problem(self.path)) is not None:
                    self._replace(problem)
        try:
            with self._db() as db:
                return operation(db)
        except sqlite3.Error as exc:
            raise SpoolError(f"report spool {self.path}: {exc}") from exc

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: the daemon's runner and session threads
        # both use the spool, and sqlite3 connections must not cross threads.
        # mode=rw: a spool that vanished is not silently made anew here.
        uri = f"file:{_quoted(self.path)}?mode=rw"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a report must survive a power cut
            with db:
                yield db

    def _replace(self, problem: str) -> None:
        """Set the damaged spool aside and start a fresh one; say so and note the loss."""
        lost = _count_readonly(self.path)
        try:
            aside = set_aside(self.path, "damaged", _SIDECARS)
        except FileNotFoundError:
            aside = None  # another process set it aside first, and says so itself
        except OSError as exc:
            raise SpoolError(
                f"report spool {self.path} is damaged ({problem}) and cannot be set aside: {exc}"
            ) from exc
        _create(self.path)
        if aside is not None:
            self._lost(lost, problem, aside)

    def _lost(self, count: int, problem: str, aside: Path | None) -> None:
        how_many = "an unknown number of" if count == UNKNOWN else str(count)
        kept = f"; kept as {aside.name}" if aside is not None else ""
        log.error(
            "report spool %s is damaged (%s)%s: %s report(s) in it will never be delivered; "
            "started a fresh spool",
            self.path,
            problem,
            f", set aside as {aside}" if aside is not None else "",
            how_many,
        )
        self._loss(count, f"{self.path.name} was damaged ({problem}){kept}")

    def _dropped(self, report_id: str, why: str) -> None:
        """A report waiting in memory is given up: never delivered, so lost."""
        log.error("report %s dropped, never to be delivered: %s", report_id, why)
        self._loss(1, f"report {report_id} dropped: {why}")

    def _loss(self, count: int, detail: str) -> None:
        losses = self._losses if self._losses is not None else _state_losses(self.path)
        losses.record(SPOOLED_REPORTS, count, detail)


def inspect(path: Path) -> tuple[int | None, str | None, int]:
    """How many reports the spool holds (or what is wrong with it), and how many are set
    aside; reads only.

    For ``plumb-agent status``: setting a damaged spool aside is for the
    agent that uses it, at its start.
    """
    try:
        problem = _problem(path)
    except SpoolError as exc:
        return None, str(exc), 0
    if problem is not None:
        damaged = f"report spool {path} is damaged ({problem}); the agent sets it aside at start"
        return None, damaged, 0
    if not path.exists():
        return 0, None, 0
    try:
        uri = f"file:{_quoted(path)}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            count = int(db.execute("SELECT count(*) FROM reports").fetchone()[0])
            has_rejected = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rejected'"
            ).fetchone()
            rejected = (
                int(db.execute("SELECT count(*) FROM rejected").fetchone()[0])
                if has_rejected
                else 0
            )
            return count, None, rejected
    except sqlite3.Error as exc:
        return None, f"report spool {path}: {exc}", 0


def _problem(path: Path) -> str | None:
    """What is wrong with the spool file at ``path``; None if it is sound or absent.

    Looked at read-only: opened read-write, SQLite would delete the ``-wal``
    of a file that is not a database, and with it reports that may be
    recoverable from the set-aside copy.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty: 0 bytes, where the agent always leaves its reports table"
    try:
        _check(path)
    except Damaged as exc:
        return str(exc)
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) in _DAMAGED:
            return str(exc)
        raise SpoolError(f"report spool {path}: {exc}") from exc
    return None


def _check(path: Path) -> None:
    """Damaged unless ``path`` passes quick_check and holds the reports table."""
    uri = f"file:{_quoted(path)}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        verdict = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        if verdict != ["ok"]:
            raise Damaged(f"quick_check: {'; '.join(verdict[:3])}")
        tables = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reports'")
        if tables.fetchone() is None:
            raise Damaged("it holds no reports table")


def _count_readonly(path: Path) -> int:
    """How many reports a damaged spool still shows, read-only; UNKNOWN if it cannot tell."""
    try:
        uri = f"file:{_quoted(path)}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            # The table itself, not the smallest index (which may be what is damaged).
            query = "SELECT count(*) FROM reports NOT INDEXED"
            return int(db.execute(query).fetchone()[0])
    except (sqlite3.Error, OSError):
        return UNKNOWN


def _create(path: Path) -> None:
    """A new spool with its table, made under a temporary name and linked into place.

    So ``spool.db`` is never an empty file an agent left: one found empty has
    lost what it held. Linked, not renamed: if another process (the daemon and
    ``run --once``) made one meanwhile, theirs stays and may already hold a report.
    """
    fresh = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        try:
            with closing(sqlite3.connect(fresh)) as db, db:
                for statement in _SCHEMA:
                    db.execute(statement)
            descriptor = os.open(fresh, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            with contextlib.suppress(FileExistsError):
                os.link(fresh, path)
        finally:
            fresh.unlink()
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except (sqlite3.Error, OSError) as exc:
        raise SpoolError(f"report spool {path}: cannot create it: {exc}") from exc


def _upgrade(db: sqlite3.Connection) -> int:
    """Bring a spool made by an older agent to this one's tables, keeping its reports.

    The next sequence number it gives.
    """
    for statement in _SCHEMA:
        db.execute(statement)
    have = {row[1] for row in db.execute("PRAGMA table_info(reports)")}
    for column, declaration in _COLUMNS.items():
        if column not in have:
            db.execute(f"ALTER TABLE reports ADD COLUMN {column} {declaration}")
    return _next_sequence(db)


def _insert(db: sqlite3.Connection, report_id: str, body: bytes, sequence: int) -> None:
    """Spool one report numbered ``sequence``, ending its run's intents (one transaction)."""
    db.execute(
        "INSERT OR IGNORE INTO reports (id, created, body, sequence) VALUES (?, ?, ?, ?)",
        (report_id, time.time(), body, sequence),
    )
    db.execute("INSERT OR REPLACE INTO meta VALUES ('next_sequence', ?)", (sequence + 1,))
    db.execute("DELETE FROM intents WHERE run = ?", (report_id,))


def _cause(exc: SpoolError) -> str:
    """What SQLite said, without the spool's path the state dir's condition already names."""
    cause = exc.__cause__
    return str(cause) if cause is not None else str(exc)


def _set_aside(db: sqlite3.Connection, report_id: str, reason: str) -> None:
    db.execute(
        "INSERT OR REPLACE INTO rejected SELECT id, ?, ?, body FROM reports WHERE id = ?",
        (time.time(), reason, report_id),
    )
    db.execute("DELETE FROM reports WHERE id = ?", (report_id,))


def _next_sequence(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'next_sequence'").fetchone()
    if row is not None:
        return int(row[0])
    # A spool from before sequence numbers: above anything it may hold.
    highest = db.execute("SELECT MAX(sequence) FROM reports").fetchone()[0]
    return int(highest or 0) + 1


def _state_losses(path: Path) -> LossLog:
    from agent.state import StateDir

    return LossLog(StateDir(path.parent))


def _quoted(path: Path) -> str:
    """``path`` for a ``file:`` URI: '?' and '#' would end the path, '%' start an escape."""
    return str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
