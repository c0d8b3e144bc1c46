"""What an agent says is taken at its word only as far as it can be shown.

Found by tests/fuzz: a hello whose loss was dated 1e300 made every later
``plumb nodes`` die of an OverflowError, and a report with a trigger or
status number no agent sends made ``plumb report`` die of a ValueError.
"""

from __future__ import annotations

import math

from server import cli, cliviews
from server.wire import LATEST_TIME, agent_time


def test_a_time_an_agent_sent_is_kept_only_if_it_can_be_one() -> None:
    assert agent_time(1764620000.5) == 1764620000.5
    assert agent_time(LATEST_TIME) == LATEST_TIME
    for absurd in (math.inf, -math.inf, math.nan, 1e300, -5.0, LATEST_TIME + 1):
        assert agent_time(absurd) == 0.0


def test_numbers_no_agent_sends_are_shown_as_words() -> None:
    assert cliviews.status_word(99) == "unknown"
    assert cliviews.trigger_word(99) == "unspecified"
    assert cliviews.trigger_word(1) == "push"


def test_a_time_this_host_cannot_show_is_said_so_not_raised() -> None:
    assert cli._when(1e300) == "1e+300 (not a time)"
    assert cli._when(0) == "-"
