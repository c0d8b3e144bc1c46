"""Flapping: a resource repaired again and again is fought over; stop fighting and say so.

The server refuses two resources that manage one object, but something the
catalog does not know about can still undo the agent's work as fast as it is
done: another configuration tool, a cron job, a package's own scripts. The
watchers then repair it within milliseconds, for ever, and every repair
looks like success. So the agent counts drift repairs per resource (repairs
of a resource that differed from a spec it had already converged to; a new
spec being rolled out does not count), and when one is repaired more than
``max_repairs`` times within ``window_s`` it is held for ``backoff_s``: not
read, not applied, reported ``failed`` with "flapping: repaired N times in M
minutes" (so compliance drops and an operator sees it), and its dependents
are skipped. After the back-off it is repaired again, and counted afresh. A
new spec for the resource (a push that changes it) ends the hold at once.

Defaults: more than 5 repairs in 10 minutes holds a resource for 30 minutes
(the settings ``flap_repairs``, ``flap_window`` and ``flap_backoff``).

The history lives in ``flapping.json`` in the state dir, so a restart does
not forget that a resource was flapping.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agent.state import StateDir
from modules.base import Status

if TYPE_CHECKING:  # the settings import this module: keep the engine out of their way
    from agent.engine import ResourceResult

DEFAULT_MAX_REPAIRS = 5
DEFAULT_WINDOW_S = 600.0
DEFAULT_BACKOFF_S = 1800.0


@dataclasses.dataclass(frozen=True)
class FlapPolicy:
    max_repairs: int = DEFAULT_MAX_REPAIRS  # more drift repairs than this ...
    window_s: float = DEFAULT_WINDOW_S  # ... within this many seconds ...
    backoff_s: float = DEFAULT_BACKOFF_S  # ... hold the resource this long

    @property
    def enabled(self) -> bool:
        return self.max_repairs > 0


@dataclasses.dataclass
class _History:
    spec: str  # the spec hash the repairs were made for
    repairs: list[float] = dataclasses.field(default_factory=list)  # wall-clock times
    held_until: float = 0.0
    reason: str = ""


class FlapGuard:
    """Counts drift repairs per resource and says which resources are held."""

    def __init__(
        self,
        state: StateDir,
        policy: FlapPolicy = FlapPolicy(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path: Path = state.path / "flapping.json"
        self.policy = policy
        self.clock = clock
        self._state = state

    def held(self, specs: Mapping[str, str]) -> dict[str, str]:
        """Resource id → why it is held now, for resources whose spec is still ``specs[id]``."""
        now = self.clock()
        return {
            rid: h.reason
            for rid, h in self._load().items()
            if h.held_until > now and specs.get(rid) == h.spec
        }

    def record(
        self, results: Iterable[ResourceResult], drift: set[str], specs: Mapping[str, str]
    ) -> list[str]:
        """Count this run's drift repairs; the ids that start being held now."""
        repaired = [r for r in results if r.status is Status.REPAIRED and r.id in drift]
        if not self.policy.enabled or (not repaired and not self.path.exists()):
            return []  # the common run: nothing to count, nothing counted before
        now = self.clock()
        histories = {rid: h for rid, h in self._load().items() if rid in specs}
        started: list[str] = []
        for result in repaired:
            history = histories.get(result.id)
            if history is None or history.spec != specs[result.id]:
                history = histories[result.id] = _History(specs[result.id])
            history.repairs = [t for t in history.repairs if t > now - self.policy.window_s]
            history.repairs.append(now)
            if len(history.repairs) > self.policy.max_repairs and history.held_until <= now:
                history.held_until = now + self.policy.backoff_s
                history.reason = self._reason(len(history.repairs), now)
                history.repairs = []
                started.append(result.id)
        # Keep what still matters: recent repairs, or a hold not over yet.
        kept = {
            rid: h
            for rid, h in histories.items()
            if h.held_until > now or any(t > now - self.policy.window_s for t in h.repairs)
        }
        self._save(kept)
        return started

    def _reason(self, repairs: int, now: float) -> str:
        minutes = self.policy.window_s / 60
        unit = "minute" if minutes == 1 else "minutes"
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now + self.policy.backoff_s))
        return (
            f"flapping: repaired {repairs} times in {minutes:g} {unit}; not repaired again "
            f"until {until} (something else keeps changing it: another tool, a script, "
            "or a package's own configuration)"
        )

    def _load(self) -> dict[str, _History]:
        raw = self._state.read_json(self.path) or {}
        try:
            return {rid: _History(**h) for rid, h in raw.items()}
        except TypeError:  # written by another version: start counting afresh
            return {}

    def _save(self, histories: Mapping[str, _History]) -> None:
        if not histories:
            self.path.unlink(missing_ok=True)
            return
        body = {rid: dataclasses.asdict(h) for rid, h in histories.items()}
        self._state.keep(self.path, json.dumps(body).encode())
