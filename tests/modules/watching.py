"""A kind's watch() in a thread of its own, recording what each on_change call saw (shared).

The contract a watcher owes the agent is not "one call per change" (events
from one change may arrive in two reads, and two changes may share one) but:
after a change, some on_change call happens at which reading the resources
shows that change. So each call snapshots the kind's read of every watched
resource, and :meth:`Watching.changed_by` waits for a call, made after the
action, that saw the action's outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from modules.base import Context, Kind


class Watching:
    def __init__(
        self,
        kind: Kind[Any, Any],
        ctx: Context,
        specs: Sequence[Any],
        snapshot: Callable[[], Any] | None = None,
    ) -> None:
        self.seen: list[Any] = []
        self._snapshot = snapshot or (lambda: [kind.read(ctx, spec) for spec in specs])
        self._cond = threading.Condition()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(kind, ctx, list(specs)), daemon=True)
        self.thread.start()

    @property
    def calls(self) -> int:
        return len(self.seen)

    def _run(self, kind: Kind[Any, Any], ctx: Context, specs: list[Any]) -> None:
        try:
            kind.watch(ctx, specs, self._called, self.stop)
        except BaseException as exc:  # handed to the test, which fails on it
            self.errors.append(exc)

    def _called(self) -> None:
        seen = self._snapshot()
        with self._cond:
            self.seen.append(seen)
            self._cond.notify_all()

    def wait_calls(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.seen) >= count, timeout)

    def prime(self, action: Callable[[], object]) -> None:
        """Repeat a managed change until it is reported: the watcher is listening."""
        deadline = time.monotonic() + 10
        while True:
            action()
            if self.wait_calls(1, timeout=0.05):
                break
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, "the watcher never reported a change"
        self.settled()  # an earlier repetition may still be on its way
        with self._cond:
            self.seen.clear()

    def changed_by(self, action: Callable[[], object], timeout: float = 5.0) -> bool:
        """Whether, after ``action``, a call comes that saw its outcome (within ``timeout``)."""
        with self._cond:
            before = len(self.seen)
        action()
        outcome = self._snapshot()
        with self._cond:
            return self._cond.wait_for(lambda: outcome in self.seen[before:], timeout)

    def settled(self, quiet: float = 0.3, timeout: float = 5.0) -> int:
        """The number of calls once none has come for ``quiet`` seconds.

        For a test that then checks that something does NOT cause a call: a
        late call from an earlier change (its second event in a later read)
        must not be taken for one.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                count = len(self.seen)
                # Used at once, within this iteration: B023's late binding cannot bite.
                if not self._cond.wait_for(lambda: len(self.seen) > count, quiet):  # noqa: B023
                    return count
                assert time.monotonic() < deadline, "the watcher never went quiet"

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(5)
