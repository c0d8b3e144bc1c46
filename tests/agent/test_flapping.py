"""Flapping: a resource repaired too often in a short window is held and reported, then retried."""

from __future__ import annotations

from pathlib import Path

from agent.engine import ResourceResult
from agent.flapping import FlapGuard, FlapPolicy
from agent.state import StateDir
from modules.base import Status

SPECS = {"file/motd": "spec-1", "file/other": "spec-9"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def repaired(rid: str = "file/motd") -> list[ResourceResult]:
    return [ResourceResult(rid, "file", rid.split("/")[1], "web", Status.REPAIRED)]


def guard(tmp_path: Path, clock: Clock) -> FlapGuard:
    state = StateDir(tmp_path)
    return FlapGuard(state, FlapPolicy(max_repairs=3, window_s=60, backoff_s=600), clock)


def test_more_repairs_than_allowed_in_the_window_hold_the_resource(tmp_path: Path) -> None:
    clock = Clock()
    flaps = guard(tmp_path, clock)
    for _ in range(3):
        assert flaps.record(repaired(), {"file/motd"}, SPECS) == []
        clock.now += 10
    assert flaps.held(SPECS) == {}
    assert flaps.record(repaired(), {"file/motd"}, SPECS) == ["file/motd"]
    reason = flaps.held(SPECS)["file/motd"]
    assert reason.startswith("flapping: repaired 4 times in 1 minute; not repaired again until ")
    # Held for the back-off, then repaired (and counted) afresh.
    clock.now += 599
    assert "file/motd" in flaps.held(SPECS)
    clock.now += 2
    assert flaps.held(SPECS) == {}


def test_repairs_spread_wider_than_the_window_never_hold(tmp_path: Path) -> None:
    clock = Clock()
    flaps = guard(tmp_path, clock)
    for _ in range(20):
        assert flaps.record(repaired(), {"file/motd"}, SPECS) == []
        clock.now += 21  # at most 3 in any 60 s
    assert flaps.held(SPECS) == {}


def test_only_drift_repairs_count(tmp_path: Path) -> None:
    clock = Clock()
    flaps = guard(tmp_path, clock)
    for _ in range(10):  # a new spec being rolled out, again and again: not drift
        assert flaps.record(repaired(), set(), SPECS) == []
    assert flaps.held(SPECS) == {}
    assert not flaps.path.exists()  # nothing to remember


def test_a_new_spec_ends_the_hold_and_the_count(tmp_path: Path) -> None:
    clock = Clock()
    flaps = guard(tmp_path, clock)
    for _ in range(4):
        flaps.record(repaired(), {"file/motd"}, SPECS)
    assert "file/motd" in flaps.held(SPECS)
    changed = {**SPECS, "file/motd": "spec-2"}
    assert flaps.held(changed) == {}
    for _ in range(3):
        assert flaps.record(repaired(), {"file/motd"}, changed) == []


def test_the_history_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    for _ in range(4):
        guard(tmp_path, clock).record(repaired(), {"file/motd"}, SPECS)
    assert list(guard(tmp_path, clock).held(SPECS)) == ["file/motd"]


def test_zero_repairs_turns_it_off(tmp_path: Path) -> None:
    flaps = FlapGuard(StateDir(tmp_path), FlapPolicy(max_repairs=0), Clock())
    for _ in range(100):
        assert flaps.record(repaired(), {"file/motd"}, SPECS) == []
    assert flaps.held(SPECS) == {}
