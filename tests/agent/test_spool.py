from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import SpoolError
from agent.main import main
from agent.spool import REFUSALS_BEFORE_ASIDE, Spool
from agent.state import Enrollment, StateDir


def body(text: str) -> Callable[[int], bytes]:
    return lambda sequence: f"{text}#{sequence}".encode()


def test_reports_stay_until_acked_and_survive_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    assert spool.add("r1", body("one")) == 1
    assert spool.add("r2", body("two")) == 2
    spool.add("r1", body("one again"))  # same id: kept once, first body wins
    assert Spool(tmp_path / "spool.db").pending() == [("r1", b"one#1"), ("r2", b"two#2")]
    spool.ack("r1")
    spool.ack("unknown")  # acking twice or out of thin air is harmless
    assert spool.pending() == [("r2", b"two#2")]
    assert spool.count() == 1


def test_sequence_numbers_only_grow_across_acks_and_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    for n in range(1, 4):
        assert spool.add(f"r{n}", body("x")) == n
        spool.ack(f"r{n}")
    # Everything acked and the spool reopened: the count carries on, never reuses 1.
    assert Spool(tmp_path / "spool.db").add("r4", body("x")) == 4
    spool.at_least(10)  # the server has stored up to 10 (this spool was lost once)
    assert spool.add("r5", body("x")) == 11
    spool.at_least(5)  # never backwards
    assert spool.add("r6", body("x")) == 12


def test_reports_go_out_in_sequence_order_whatever_the_clock_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool.db")
    clock = iter([2000.0, 1000.0, 1500.0])  # the clock stepped back between runs
    monkeypatch.setattr("agent.spool.time.time", lambda: next(clock))
    for name in ("a", "b", "c"):
        spool.add(name, body(name))
    assert [rid for rid, _ in spool.pending()] == ["a", "b", "c"]


def test_a_spool_from_before_sequences_is_upgraded_and_keeps_its_reports(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:  # the spool of Plumb 0.1.0
        db.execute("CREATE TABLE reports (id TEXT PRIMARY KEY, created REAL NOT NULL, body BLOB)")
        db.execute("INSERT INTO reports VALUES ('old', 1.0, x'01')")
    spool = Spool(path)
    assert spool.pending() == [("old", b"\x01")]
    assert spool.add("new", body("n")) == 1
    assert [rid for rid, _ in spool.pending()] == ["old", "new"]


def test_a_report_refused_again_and_again_goes_last_then_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    for name in ("big", "next", "later"):
        spool.add(name, body(name))
    assert spool.refused("big", "RESOURCE_EXHAUSTED") is False
    assert [rid for rid, _ in spool.pending()] == ["next", "later", "big"]
    for _ in range(REFUSALS_BEFORE_ASIDE - 2):
        assert spool.refused("big", "RESOURCE_EXHAUSTED") is False
    assert spool.refused("big", "RESOURCE_EXHAUSTED") is True
    assert [rid for rid, _ in spool.pending()] == ["next", "later"]
    assert (spool.count(), spool.rejected()) == (2, 1)


def test_a_spool_that_is_not_a_database_is_a_spool_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not an SQLite database, it is garbage" * 100)
    with pytest.raises(SpoolError, match=f"report spool {path}: file is not a database"):
        Spool(path)


def test_status_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    state.save_enrollment(Enrollment("web-1", "localhost:8443", {}, 0.0))
    state.spool.write_bytes(b"garbage" * 1000)
    assert main(["--config", "/dev/null", "--state-dir", str(tmp_path), "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"plumb-agent: report spool {state.spool}: file is not a database")
    assert "Traceback" not in err
