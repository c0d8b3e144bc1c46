from __future__ import annotations

import pytest

from agent.daemon import REFUSED_WINDOW_S, REPLACED_WAIT_S, backoff_window, replaced_wait

REFUSED = (
    "UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: "
    "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"
)


@pytest.mark.parametrize(
    ("attempt", "window"), [(0, 0.5), (1, 1.0), (3, 4.0), (7, 60.0), (50, 60.0)]
)
def test_window_grows_exponentially_up_to_the_cap(attempt: int, window: float) -> None:
    assert backoff_window(attempt, "DEADLINE_EXCEEDED: handshake", 60.0) == window


def test_refused_connections_retry_within_a_short_window() -> None:
    assert backoff_window(0, REFUSED, 60.0) == 0.5
    assert backoff_window(9, REFUSED, 60.0) == REFUSED_WINDOW_S


def test_a_session_taken_over_is_taken_back_later_each_time_in_a_row() -> None:
    """Another process of this node took the session: not back at once, and slower each time."""
    assert replaced_wait(1, 60.0) == REPLACED_WAIT_S  # a run --once's few seconds
    waits = [replaced_wait(times, 60.0) for times in range(2, 60) for _ in range(20)]
    assert all(REPLACED_WAIT_S <= w <= 60.0 for w in waits)
    assert max(replaced_wait(8, 60.0) for _ in range(200)) > 30.0  # two hosts: about a minute
