"""The agent's state on a full file system: nothing lost, numbered on, written once it can be.

Every test puts a state dir on a small tmpfs of its own and fills it to the
last byte (tests/fullfs.py): SQLite, the JSON files and the cached catalog
meet the real ENOSPC.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import spool as spool_module
from agent.conditions import STATE_DIR_UNWRITABLE
from agent.losses import SPOOLED_REPORTS, LossLog
from agent.spool import Spool
from agent.state import StateDir
from tests.fullfs import fill, on_its_own_tmpfs


def body(text: str) -> Callable[[int], bytes]:
    return lambda sequence: f"{text}#{sequence}".encode()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[StateDir, Path]]:
    """A state dir on its own 1 MiB tmpfs, and the filler that fills it."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    with on_its_own_tmpfs(directory, size="1m") as filler:
        yield StateDir(directory), filler


def stored(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, sequence FROM reports ORDER BY sequence").fetchall()
    return [(str(i), int(n)) for i, n in rows]


def unwritable(state: StateDir) -> bool:
    return [c.name for c in state.conditions.current()] == [STATE_DIR_UNWRITABLE]


def test_reports_wait_in_memory_numbered_on_and_are_written_once_there_is_room(
    state: tuple[StateDir, Path],
) -> None:
    state_dir, filler = state
    spool = Spool(state_dir.spool, LossLog(state_dir), state_dir.unwritable)
    assert spool.add("r1", body("one")) == 1
    spool.ack("r1")

    fill(filler)
    assert (spool.add("r2", body("two")), spool.add("r3", body("three"))) == (2, 3)
    assert unwritable(state_dir)
    assert "its file system is full" in state_dir.conditions.current()[0].detail
    assert spool.pending() == [("r2", b"two#2"), ("r3", b"three#3")]
    assert spool.count() == 2
    spool.ack("r2")  # sent from memory and acked: never written at all
    assert not spool.catch_up()

    filler.unlink()
    assert spool.catch_up()
    assert stored(state_dir.spool) == [("r3", 3)]
    assert spool.add("r4", body("four")) == 4  # the count went on in memory
    assert [i for i, _ in spool.pending()] == ["r3", "r4"]


def test_an_ack_that_cannot_be_deleted_is_not_sent_again_and_deleted_later(
    state: tuple[StateDir, Path],
) -> None:
    state_dir, filler = state
    spool = Spool(state_dir.spool, LossLog(state_dir), state_dir.unwritable)
    spool.add("r1", body("one"))
    fill(filler)
    spool.ack("r1")
    assert spool.pending() == [] and spool.count() == 0

    filler.unlink()
    assert spool.catch_up()
    assert stored(state_dir.spool) == []


def test_a_spool_that_cannot_even_be_made_numbers_from_the_server(
    state: tuple[StateDir, Path],
) -> None:
    state_dir, filler = state
    fill(filler)
    spool = Spool(state_dir.spool, LossLog(state_dir), state_dir.unwritable)
    assert unwritable(state_dir)
    assert spool.add("r1", body("one")) == 0  # no number known yet: not sent unnumbered
    assert spool.pending() == []
    spool.at_least(41)  # the Welcome: the server has up to 41
    assert spool.pending() == [("r1", b"one#42")]

    filler.unlink()
    assert spool.catch_up()
    assert stored(state_dir.spool) == [("r1", 42)]
    assert spool.add("r2", body("two")) == 43


def test_beyond_its_bound_the_oldest_report_in_memory_is_dropped_and_counted_lost(
    state: tuple[StateDir, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir, filler = state
    monkeypatch.setattr(spool_module, "BACKLOG_REPORTS", 2)
    losses = LossLog(state_dir)
    spool = Spool(state_dir.spool, losses, state_dir.unwritable)
    fill(filler)
    for n in range(1, 4):
        spool.add(f"r{n}", body(str(n)))
    assert [i for i, _ in spool.pending()] == ["r2", "r3"]
    [loss] = losses.pending()  # in memory too: losses.json cannot be written either
    assert (loss.what, loss.count) == (SPOOLED_REPORTS, 1)
    assert "report r1 dropped" in loss.detail

    filler.unlink()
    assert losses.catch_up()
    assert [x.id for x in LossLog(state_dir).pending()] == [loss.id]


def test_bookkeeping_files_are_skipped_not_fatal_and_leave_no_temporaries(
    state: tuple[StateDir, Path],
) -> None:
    state_dir, filler = state
    fill(filler)
    assert not state_dir.keep(state_dir.last_run, b"{}" * 100_000)
    assert unwritable(state_dir)
    assert not state_dir.last_run.exists()
    assert sorted(p.name for p in state_dir.path.iterdir()) == ["filler"]
    assert not state_dir.takes_writes()

    filler.unlink()
    assert state_dir.takes_writes()
    assert state_dir.keep(state_dir.last_run, b"{}")
    state_dir.writable()
    assert state_dir.conditions.current() == []
