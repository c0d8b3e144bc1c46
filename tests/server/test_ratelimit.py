"""Token buckets, on a clock the test moves."""

from __future__ import annotations

import pytest

from server import ratelimit
from server.ratelimit import Buckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_and_each_key_on_its_own() -> None:
    clock = Clock()
    buckets = Buckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every half second
    assert buckets.take("b") == 0.0
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, no more


def test_full_buckets_are_forgotten_when_there_are_too_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_KEYS", 10)
    clock = Clock()
    buckets = Buckets(rate=1.0, burst=5, clock=clock)
    for n in range(10):
        buckets.take(f"old-{n}")
    clock.now += 10  # all refilled
    buckets.take("new")
    assert list(buckets._tokens) == ["new"]
