from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SpoolError
from agent.main import main
from agent.spool import Spool
from agent.state import Enrollment, StateDir


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
