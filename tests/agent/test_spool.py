from __future__ import annotations

from pathlib import Path

from agent.spool import Spool


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
