from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.losses import SPOOLED_REPORTS, UNKNOWN, LossLog
from agent.main import main
from agent.spool import Spool, inspect
from agent.state import Enrollment, StateDir
from tests.agent.damage import corrupt_the_index


def test_reports_stay_until_acked_and_survive_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.add("r1", b"one")
    spool.add("r2", b"two")
    spool.add("r1", b"one again")  # same id: kept once, first body wins
    assert Spool(tmp_path / "spool.db").pending() == [("r1", b"one"), ("r2", b"two")]
    spool.ack("r1")
    spool.ack("unknown")  # acking twice or out of thin air is harmless
    assert spool.pending() == [("r2", b"two")]
    assert spool.count() == 1
    assert LossLog(StateDir(tmp_path)).recent() == []


def test_a_new_spool_is_private_and_never_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size > 0  # the table is in it from the start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db"]


def damaged_with_three_reports(path: Path) -> None:
    spool = Spool(path)
    for i in range(3):
        spool.add(f"r{i}", b"x" * 100)
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
    spool.add("fresh", b"new")
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
    Spool(path).add("r1", b"one")
    Path(f"{path}-wal").write_bytes(b"wal of the damaged one")
    path.write_bytes(b"garbage" * 100)
    Spool(path)
    [aside] = [p for p in tmp_path.glob("spool.db.damaged-*") if p.name.count("-") == 1]
    assert Path(f"{aside}-wal").read_bytes() == b"wal of the damaged one"
    assert Spool(path).count() == 0  # the fresh spool did not pick up the old WAL


def test_damage_found_while_running_is_recovered_and_the_operation_done(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.add("r1", b"one")
    for sidecar in ("-wal", "-shm"):
        Path(f"{path}{sidecar}").unlink(missing_ok=True)
    path.write_bytes(b"overwritten while the agent runs" * 100)
    spool.add("r2", b"two")
    assert spool.pending() == [("r2", b"two")]
    [loss] = LossLog(StateDir(tmp_path)).pending()
    assert loss.what == SPOOLED_REPORTS


def test_a_sound_spool_is_never_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).add("r1", b"one")
    assert Spool(path).pending() == [("r1", b"one")]
    assert list(tmp_path.glob("spool.db.damaged-*")) == []


def test_inspect_reads_only(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    assert inspect(path) == (0, None)
    Spool(path).add("r1", b"one")
    assert inspect(path) == (1, None)
    path.write_bytes(b"garbage" * 100)
    count, problem = inspect(path)
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
