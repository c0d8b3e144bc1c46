"""Reports waiting for the server's acknowledgement, kept in SQLite.

A report is written here (and fsynced) before anything tries to send it, and
deleted only when the server acks its id. Resending is always safe: the
server ingests by id, once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from agent.errors import SpoolError


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS reports "
                "(id TEXT PRIMARY KEY, created REAL NOT NULL, body BLOB NOT NULL)"
            )

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

    def add(self, report_id: str, body: bytes) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO reports VALUES (?, ?, ?)", (report_id, time.time(), body)
            )

    def pending(self) -> list[tuple[str, bytes]]:
        with self._db() as db:
            return [
                (str(i), bytes(b))
                for i, b in db.execute("SELECT id, body FROM reports ORDER BY created, id")
            ]

    def ack(self, report_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM reports WHERE id = ?", (report_id,))

    def count(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM reports").fetchone()[0])
