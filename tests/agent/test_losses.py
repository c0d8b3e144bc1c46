"""Losses of local state are kept until the server has recorded them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.losses import CACHED_CATALOG, KEEP_RECORDED, SPOOLED_REPORTS, UNKNOWN, LossLog, describe
from agent.state import StateDir


@pytest.fixture
def log(tmp_path: Path) -> LossLog:
    state = StateDir(tmp_path)
    state.ensure()
    return LossLog(state)


def test_a_loss_is_pending_until_recorded_and_survives_a_restart(log: LossLog) -> None:
    first = log.record(SPOOLED_REPORTS, 12, "spool.db was damaged")
    second = log.record(CACHED_CATALOG, 1, "catalog.pb rejected")
    assert log.generation == 2
    again = LossLog(log.state)  # another process, or the agent after a restart
    assert [x.id for x in again.pending()] == [first.id, second.id]
    again.recorded([first.id, "an id nobody made"])
    assert [x.id for x in log.pending()] == [second.id]
    assert [(x.id, x.recorded) for x in log.recent()] == [(first.id, True), (second.id, False)]
    assert first.to_wire().count == 12 and first.to_wire().what == "spooled_reports"


def test_only_unrecorded_losses_are_kept_for_ever(log: LossLog) -> None:
    kept = log.record(SPOOLED_REPORTS, UNKNOWN, "never recorded")
    recorded = [log.record(SPOOLED_REPORTS, i, f"#{i}").id for i in range(KEEP_RECORDED + 5)]
    log.recorded(recorded)
    assert log.pending() == [kept]
    assert [x.id for x in log.recent() if x.recorded] == recorded[-KEEP_RECORDED:]


@pytest.mark.parametrize("damage", [b"{half", b"\xff\xfe", b'{"losses": [{"id": 1}]}', b"[]"])
def test_a_damaged_losses_file_reads_as_none_and_is_rewritten(log: LossLog, damage: bytes) -> None:
    log.state.losses.write_bytes(damage)
    assert log.recent() == []
    loss = log.record(SPOOLED_REPORTS, 1, "x")
    assert log.pending() == [loss]


def test_describe() -> None:
    assert describe(SPOOLED_REPORTS, 12) == "12 spooled reports"
    assert describe(SPOOLED_REPORTS, 1) == "1 spooled report"
    assert describe(SPOOLED_REPORTS, UNKNOWN) == "an unknown number of spooled reports"
    assert describe(CACHED_CATALOG, 1) == "its cached catalog"
