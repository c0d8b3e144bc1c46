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
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from agent.errors import SpoolError

#: After this many refusals by the server a report is set aside.
REFUSALS_BEFORE_ASIDE = 3

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS reports "
    "(id TEXT PRIMARY KEY, created REAL NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rejected "
    "(id TEXT PRIMARY KEY, set_aside REAL NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL)",
)
# Columns added since the first spools, which had only id, created and body.
_COLUMNS = {"sequence": "INTEGER", "refusals": "INTEGER NOT NULL DEFAULT 0"}


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            have = {row[1] for row in db.execute("PRAGMA table_info(reports)")}
            for column, declaration in _COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE reports ADD COLUMN {column} {declaration}")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # A connection per operation: the daemon's runner and session threads
        # both use the spool, and sqlite3 connections must not cross threads.
        try:
            with closing(sqlite3.connect(self.path, timeout=30)) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a report must survive a power cut
                with db:
                    yield db
        except sqlite3.Error as exc:
            raise SpoolError(f"report spool {self.path}: {exc}") from exc

    def add(self, report_id: str, build: Callable[[int], bytes]) -> int:
        """Spool the report ``build(sequence)`` makes with the next sequence number; that number.

        One transaction: a number is never given twice nor skipped by a crash.
        """
        with self._db() as db:
            sequence = _next_sequence(db)
            db.execute(
                "INSERT OR IGNORE INTO reports (id, created, body, sequence) VALUES (?, ?, ?, ?)",
                (report_id, time.time(), build(sequence), sequence),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('next_sequence', ?)", (sequence + 1,))
        return sequence

    def at_least(self, last_sequence: int) -> None:
        """The server has stored reports up to ``last_sequence``: number new ones above it."""
        with self._db() as db:
            if _next_sequence(db) <= last_sequence:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('next_sequence', ?)", (last_sequence + 1,)
                )

    def pending(self) -> list[tuple[str, bytes]]:
        """What to send, oldest first; reports the server refused come last."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, body FROM reports ORDER BY refusals > 0, COALESCE(sequence, 0), "
                "created, id"
            )
            return [(str(i), bytes(b)) for i, b in rows]

    def ack(self, report_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM reports WHERE id = ?", (report_id,))

    def refused(self, report_id: str, reason: str) -> bool:
        """The server refused ``report_id``; True if it has now been set aside."""
        with self._db() as db:
            db.execute("UPDATE reports SET refusals = refusals + 1 WHERE id = ?", (report_id,))
            row = db.execute("SELECT refusals FROM reports WHERE id = ?", (report_id,)).fetchone()
            if row is None or row[0] < REFUSALS_BEFORE_ASIDE:
                return False
            _set_aside(db, report_id, reason)
            return True

    def set_aside(self, report_id: str, reason: str) -> None:
        """Keep ``report_id`` for inspection, never to be sent: no server could take it."""
        with self._db() as db:
            _set_aside(db, report_id, reason)

    def count(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM reports").fetchone()[0])

    def rejected(self) -> int:
        """How many reports were set aside because the server kept refusing them."""
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM rejected").fetchone()[0])


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
