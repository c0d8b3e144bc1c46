"""Stores as earlier releases left them, for the upgrade tests.

``store-0.1.0.sql`` is Plumb 0.1.0's store with rows in every table, as
``sqlite3 .dump`` writes it; make_store_0_1_0.py says how it was made.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

STORE_0_1_0 = Path(__file__).parent / "store-0.1.0.sql"

#: Every table of the 0.1.0 schema (each holds rows in the fixture).
TABLES_0_1_0 = (
    "catalogs",
    "drift_events",
    "nodes",
    "reports",
    "resource_status",
    "revisions",
    "tokens",
)


def load_store_0_1_0(path: Path) -> Path:
    """Write Plumb 0.1.0's store, with its data, to ``path`` (replacing what is there)."""
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    try:
        db.executescript(STORE_0_1_0.read_text())
        db.execute("PRAGMA journal_mode=WAL")  # as 0.1.0's server left its store
    finally:
        db.close()
    return path


def rows(path: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple[object, ...]]]:
    """Every row of each table, in the given columns only, in a stable order."""
    db = sqlite3.connect(path)
    try:
        selected = {table: ", ".join(f'"{c}"' for c in cols) for table, cols in columns.items()}
        return {
            table: sorted(db.execute(f"SELECT {cols} FROM {table}").fetchall(), key=repr)
            for table, cols in selected.items()
        }
    finally:
        db.close()


def columns(path: Path) -> dict[str, list[str]]:
    """The columns of each 0.1.0 table in the store at ``path``."""
    db = sqlite3.connect(path)
    try:
        return {
            table: [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            for table in TABLES_0_1_0
        }
    finally:
        db.close()
