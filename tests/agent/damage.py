"""Damaging a report spool the way a disk or a crash does, for tests."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def corrupt_the_index(path: Path) -> None:
    """Overwrite the page of the spool's primary-key index with garbage.

    quick_check sees the damage; the table itself still reads, so how many
    reports it held is known.
    """
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_reports_1'"
        ).fetchone()[0]
    with open(path, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\xa5" * page)
