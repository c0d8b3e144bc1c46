from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.losses import SPOOLED_REPORTS, UNKNOWN, LossLog
from agent.main import main
from agent.spool import REFUSALS_BEFORE_ASIDE, Spool, inspect
from agent.state import Enrollment, StateDir
from tests.agent.damage import corrupt_the_index


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
    assert LossLog(StateDir(tmp_path)).recent() == []


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


def test_a_new_spool_is_private_and_never_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size > 0  # the table is in it from the start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db"]


def damaged_with_three_reports(path: Path) -> None:
    spool = Spool(path)
    for i in range(3):
        spool.add(f"r{i}", lambda _: b"x" * 100)
    corrupt_the_index(path)


DAMAGE = {
    # what is written to spool.db, and the number of reports known to be lost
    "garbage": (lambda p: p.write_bytes(b"this is not an SQLite database" * 100), UNKNOWN),
    "empty": (lambda p: p.write_bytes(b""), UNKNOWN),
    "truncated": (lambda p: (damaged_with_three_reports(p), os.truncate(p, 1024)), UNKNOWN),
    "damaged index": (damaged_with_three_reports, 3),
    "no reports table": (lambda p: sqlite3.connect(p).execute("CREATE TABLE t (x)"), UNKNOWN),
    "a directory": (lambda p: p.mkdir(), UNKNOWN),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_spool_is_set_aside_and_a_fresh_one_started(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spool.db"
    make, lost = DAMAGE[damage]
    make(path)
    with caplog.at_level(logging.ERROR, "plumb.agent"):
        spool = Spool(path)
    spool.add("fresh", lambda _: b"new")
    assert spool.pending() == [("fresh", b"new")]
    [aside] = [p for p in tmp_path.glob("spool.db.damaged-*") if p.name.count("-") == 1]
    assert stat.S_IMODE(aside.lstat().st_mode) == 0o600
    [line] = [r.getMessage() for r in caplog.records]
    assert f"set aside as {aside}" in line and "started a fresh spool" in line
    [loss] = LossLog(StateDir(tmp_path)).pending()
    assert (loss.what, loss.count) == (SPOOLED_REPORTS, lost)
    assert loss.detail.startswith("spool.db was damaged (") and aside.name in loss.detail


def test_a_damaged_spool_goes_aside_with_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).add("r1", lambda _: b"one")
    Path(f"{path}-wal").write_bytes(b"wal of the damaged one")
    path.write_bytes(b"garbage" * 100)
    Spool(path)
    [aside] = [p for p in tmp_path.glob("spool.db.damaged-*") if p.name.count("-") == 1]
    assert Path(f"{aside}-wal").read_bytes() == b"wal of the damaged one"
    assert Spool(path).count() == 0  # the fresh spool did not pick up the old WAL


def test_damage_found_while_running_is_recovered_and_the_operation_done(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.add("r1", lambda _: b"one")
    for sidecar in ("-wal", "-shm"):
        Path(f"{path}{sidecar}").unlink(missing_ok=True)
    path.write_bytes(b"overwritten while the agent runs" * 100)
    spool.add("r2", lambda _: b"two")
    assert spool.pending() == [("r2", b"two")]
    [loss] = LossLog(StateDir(tmp_path)).pending()
    assert loss.what == SPOOLED_REPORTS


def test_a_sound_spool_is_never_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).add("r1", lambda _: b"one")
    assert Spool(path).pending() == [("r1", b"one")]
    assert list(tmp_path.glob("spool.db.damaged-*")) == []


def test_inspect_reads_only(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    assert inspect(path) == (0, None, 0)
    Spool(path).add("r1", lambda _: b"one")
    assert inspect(path) == (1, None, 0)
    path.write_bytes(b"garbage" * 100)
    count, problem, _ = inspect(path)
    assert count is None and problem is not None and "is damaged" in problem
    assert path.read_bytes() == b"garbage" * 100


def enrolled_state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path)
    state.ensure()
    state.save_enrollment(Enrollment("web-1", "localhost:8443", {}, 0.0))
    return state


def test_status_shows_damaged_state_without_touching_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = enrolled_state(tmp_path)
    state.spool.write_bytes(b"garbage" * 1000)
    state.catalog.write_bytes(b"\xff garbage")
    state.last_run.write_text("[1, 2")  # half a file
    argv = ["--config", "/dev/null", "--state-dir", str(tmp_path), "status"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"catalog revision:  none ({state.catalog} is not used: it does not parse" in out
    assert f"spooled reports:   report spool {state.spool} is damaged" in out
    assert "last run:          never" in out
    assert main([*argv, "--json"]) == 0
    shape = json.loads(capsys.readouterr().out)
    assert (shape["catalog_revision"], shape["spooled_reports"], shape["losses"]) == (0, None, [])
    assert "does not parse" in shape["catalog_problem"]
    assert "is damaged" in shape["spool_problem"]
    # Nothing was moved: the agent sets damaged state aside when it starts, not status.
    assert state.spool.read_bytes() == b"garbage" * 1000
    assert state.catalog.read_bytes() == b"\xff garbage"


def test_status_lists_what_was_lost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = enrolled_state(tmp_path)
    state.spool.write_bytes(b"")
    Spool(state.spool)
    argv = ["--config", "/dev/null", "--state-dir", str(tmp_path), "status"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "spooled reports:   0\n" in out
    assert "lost:              an unknown number of spooled reports at " in out
    assert "not reported to the server yet" in out
    assert main([*argv, "--json"]) == 0
    [loss] = json.loads(capsys.readouterr().out)["losses"]
    assert (loss["what"], loss["count"], loss["reported"]) == ("spooled_reports", None, False)
