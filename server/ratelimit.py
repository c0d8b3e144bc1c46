"""Token buckets by key: how much one source or one node may ask of the server per second.

Each key (a source address, a node) has a bucket of ``burst`` tokens that
refills at ``rate`` a second; a request takes one. :meth:`Buckets.take`
says how long until one is there, so a caller can refuse with that hint
(enrollment) or wait that long (a node's reports: back-pressure, since the
agent sends the next only once this one is acknowledged... or its stream's
flow control stops it). Buckets that are full again are forgotten, so the
table stays as small as the set of keys that are busy now.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Keys tracked at most: beyond that the fullest buckets go first.
MAX_KEYS = 100_000


class Buckets:
    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def take(self, key: str) -> float:
        """Take a token for ``key`` if there is one (0.0); else the seconds until there is."""
        now = self.clock()
        tokens, at = self._tokens.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._tokens[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._tokens[key] = (tokens - 1.0, now)
        if len(self._tokens) > MAX_KEYS:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        """Drop the keys whose buckets have refilled: they are as good as new."""
        full = [
            k for k, (t, at) in self._tokens.items() if t + (now - at) * self.rate >= self.burst
        ]
        for key in full:
            del self._tokens[key]
