"""Event-driven drift: the watchers of the current catalog, and when they ask for a run.

For every kind of the catalog that is ``watchable``, one thread runs the
kind's :meth:`~modules.base.Kind.watch` over the specs of that kind. Its
``on_change`` calls are debounced: once things have been quiet for
``quiet_s`` (or at the latest ``max_delay_s`` after the first call), the
watched resources are *checked* and, if one of them really changed, the
daemon is asked for a run with trigger ``WATCH``.

Why a check, and not a run on every event: the agent's own applies cause
events too (an atomic replace is a create and a rename in the watched
directory), and running on those would run again after every run. A check
reads and diffs the watched resources, applies nothing, reports nothing, and
compares with what the last run left: no differences for a resource in sync
or repaired, the same differences for a drifted one (audit). The echo of an
apply finds exactly that, so it ends in the check; and since a check never
writes, it cannot feed itself. There is no time window in which a real
change is ignored: events during a run are kept and checked when it ends.

Failed resources need care. After a failure in a run that events did not
cause (a push, the schedule), the next event causes a run: an operator may
just have fixed the cause (made the missing directory). So does the next
event after a failure the kind called transient (a busy package manager: its
lock is released with a change to its database). After any other failure in a
run that events caused, a check compares with the differences that run found,
as for a drifted resource: the same differences again (the echo of an apply
that touched the file and then failed) run nothing, which bounds that case to
one extra run; anything else (the resource removed again, or repaired by a
run the daemon did not make, such as ``plumb-agent run --once``) is a new
change and runs. No failure makes the watcher deaf to a resource.

Watchers keep watching. A kind's ``watch`` that raises (``nft monitor``
killed, D-Bus restarted) is logged and started again after a back-off
(:data:`RESTART_FIRST_S`, doubling to :data:`RESTART_MAX_S`), and a check
follows each restart for what changed while nobody watched. A check that
cannot read a resource asks for a run (which says what is wrong); reads in a
check run under the kind's timeout like a run's, so a hung command cannot
stall the watchers either.

Watchers say when they make do with less. A kind's watch that polls what
inotify would not watch says so through its context
(:attr:`~modules.base.Context.watch_degraded`); while any does, the node has
the condition ``watch_polling`` (:meth:`Watchers.conditions`), naming the
kinds, paths and reasons, and a warning is logged when it starts. What a
watcher said ends with it: with a new catalog, a stop, or the watch failing.

Usage, from the daemon::

    watchers = Watchers(root, request_run=lambda: queue_a_run(Trigger.WATCH))
    watchers.start(catalog)          # a run of it is queued; again for every new catalog
    watchers.run_started()           # around every run, whatever its trigger
    watchers.run_finished(report)
    watchers.conditions()            # for the hello and every heartbeat
    watchers.stop()
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from agent.conditions import WATCH_POLLING, Condition, Conditions
from agent.report import RunReport, Trigger
from modules import registry
from modules.base import DEFAULT_TIMEOUT_S, Change, Context, Kind, Status, Watchable
from modules.catalog import Catalog

log = logging.getLogger("plumb.agent.watch")

#: A watcher whose ``watch`` raised is started again after this many seconds,
#: doubling after every failure up to RESTART_MAX_S; back to the first delay
#: once it has watched for RESTART_MAX_S without failing.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0

KindLookup = Callable[[str], Kind[Any, Any]]

# What the last run left of a resource, which a check compares with: the
# differences that remained (none when in sync or repaired; for a failure in
# a run caused by events, the ones it found), or a failure to retry on the
# next event, or nothing to go by (skipped, unknown): events alone do not make
# such a resource run.
Expected = tuple[Change, ...] | Literal["retry", "ignore"]


@dataclasses.dataclass(frozen=True)
class Watched:
    """One watched resource, with its spec parsed by its kind."""

    id: str
    kind: Kind[Any, Any]
    spec: Any
    #: Seconds a check's read of it may take: its own ``timeout``, or its kind's.
    timeout_s: float = DEFAULT_TIMEOUT_S


def targets(catalog: Catalog, kinds: KindLookup = registry.get) -> list[Watched]:
    """The catalog's resources whose kind can be watched.

    A resource whose kind is unknown or whose spec does not parse is left
    out: the run reports it as failed, and there is nothing to watch.
    """
    found = []
    for res in catalog.resources:
        try:
            kind = kinds(res.kind)
            if isinstance(kind, Watchable):
                limit = res.timeout_s if res.timeout_s is not None else kind.timeout_s
                found.append(Watched(res.id, kind, kind.parse(res.spec), limit))
        except Exception as exc:
            log.debug("%s: not watched (%s)", res.id, exc)
    return found


def expected_after(report: RunReport) -> dict[str, Expected]:
    """What ``report``'s run left of each resource, for checks until the next run."""
    left: dict[str, Expected] = {}
    for result in report.results:
        if result.status in (Status.IN_SYNC, Status.REPAIRED):
            left[result.id] = ()
        elif result.status is Status.DRIFTED:
            left[result.id] = tuple(result.changes)
        elif result.status is Status.FAILED:
            transient = result.transient or report.trigger is not Trigger.WATCH
            left[result.id] = "retry" if transient else tuple(result.changes)
        else:
            left[result.id] = "ignore"
    return left


class Watchers:
    """One watcher thread per watchable kind of the current catalog, and a debouncer."""

    def __init__(
        self,
        root: Path,
        request_run: Callable[[], None],
        *,
        kinds: KindLookup = registry.get,
        quiet_s: float = 0.05,
        max_delay_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        restart_s: tuple[float, float] = (RESTART_FIRST_S, RESTART_MAX_S),
    ) -> None:
        self._ctx = Context(root=root, log=log)
        self._request_run = request_run
        self._kinds = kinds
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._clock = clock
        self._restart_s = restart_s
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        self._revision = 0
        self._targets: list[Watched] = []
        self._expected: dict[str, Expected] = {}
        self._dirty = False  # an event came since the last check or run started
        self._first = self._last = 0.0  # when the first and the last of those came
        self._running = False  # a run is in progress
        self._queued = False  # a run is on its way (ours, or the one start() announces)
        self._closed = False
        self._stops: list[threading.Event] = []  # one per watcher thread of the catalog
        # What each running watcher (by its stop) said it polls: its kind, its sentence.
        self._polling: dict[threading.Event, tuple[str, str]] = {}
        self._conditions = Conditions()
        self._threads: list[threading.Thread] = []
        self._debouncer: threading.Thread | None = None

    # --- what the daemon calls ---------------------------------------------

    def start(self, catalog: Catalog) -> None:
        """Watch ``catalog`` instead of whatever was watched before.

        Call it when a run of ``catalog`` is queued (the daemon does, at start
        with the cached catalog and on every accepted catalog): that run
        converges the new resources, so events until it ends are checked after.
        """
        found = targets(catalog, self._kinds)
        with self._cond:
            if self._closed:
                return
            self._stop_watchers()
            self._revision = catalog.revision
            self._targets = found
            self._expected = {}
            self._queued = True
            self._dirty = False
            by_kind: dict[str, list[Watched]] = {}
            for target in found:
                by_kind.setdefault(target.kind.name, []).append(target)
            for name, group in by_kind.items():
                self._spawn(group[0].kind, [t.spec for t in group], name)
            if self._debouncer is None:
                self._debouncer = self._thread(self._debounce, "plumb-watch-debounce")
        if found:
            log.info(
                "watching %d resource(s) of revision %d: %s",
                len(found),
                catalog.revision,
                ", ".join(sorted(by_kind)),
            )

    def run_started(self) -> None:
        """A run began; it reads everything afresh, so earlier events are answered."""
        with self._cond:
            self._running = True
            self._queued = False
            self._dirty = False

    def run_finished(self, report: RunReport | None) -> None:
        """A run ended; check what events came meanwhile, against what it left."""
        with self._cond:
            self._running = False
            if report is not None and report.revision == self._revision and not report.noop:
                self._expected = expected_after(report)
            if self._dirty:
                # Debounce from now: the echoes of the run's last applies may
                # still be on their way, and one check answers them all.
                self._first = self._last = self._clock()
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread and wait (up to ``timeout`` each) for them to end."""
        with self._cond:
            self._closed = True
            self._stop_watchers()
            self._cond.notify_all()
            threads = [*self._threads, *([self._debouncer] if self._debouncer else [])]
        for thread in threads:
            thread.join(timeout)

    def conditions(self) -> list[Condition]:
        """What is wrong with watching now: ``watch_polling`` while a watcher polls."""
        return self._conditions.current()

    # --- what watchers call ------------------------------------------------

    def on_change(self) -> None:
        """Something watched may have changed (called from watcher threads)."""
        with self._cond:
            now = self._clock()
            if not self._dirty:
                self._first = now
            self._dirty = True
            self._last = now
            self._cond.notify_all()

    # --- inside ----------------------------------------------------------

    def _degraded(self, stop: threading.Event, kind: str, sentence: str | None) -> None:
        """The watcher of ``kind`` that ``stop`` ends polls (``sentence``), or no longer does."""
        with self._cond:
            if stop.is_set():
                return  # on its way out: what it says is no longer true of the node
            before = self._polling.pop(stop, None)
            if sentence is not None:
                self._polling[stop] = (kind, sentence)
            self._hold_polling()
        if sentence is not None:
            log.warning("watcher of kind %r is %s", kind, sentence)
        elif before is not None:
            log.info("watcher of kind %r watches everything again, no longer polling", kind)

    def _hold_polling(self) -> None:
        """The ``watch_polling`` condition, as the watchers' last words say (holding _cond)."""
        said = sorted(self._polling.values())
        if said:
            self._conditions.hold(WATCH_POLLING, "; ".join(f"{k}: {s}" for k, s in said))
        else:
            self._conditions.clear(WATCH_POLLING)

    def _spawn(self, kind: Kind[Any, Any], specs: list[Any], name: str) -> None:
        stop = threading.Event()
        self._stops.append(stop)
        self._threads = [t for t in self._threads if t.is_alive()]
        ctx = dataclasses.replace(
            self._ctx, watch_degraded=lambda sentence: self._degraded(stop, name, sentence)
        )
        self._threads.append(
            self._thread(lambda: self._watch(kind, ctx, specs, stop), f"plumb-watch-{name}")
        )

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _stop_watchers(self) -> None:
        for stop in self._stops:
            stop.set()
        self._stops = []
        self._polling.clear()  # what they said ends with them
        self._hold_polling()

    def _watch(
        self, kind: Kind[Any, Any], ctx: Context, specs: list[Any], stop: threading.Event
    ) -> None:
        """``kind.watch`` until ``stop``; started again, after a back-off, whenever it fails."""
        assert isinstance(kind, Watchable)  # targets() only gives watchable ones
        first, most = self._restart_s
        delay = first
        while not stop.is_set():
            began = self._clock()
            failure: Exception | None = None
            try:
                kind.watch(ctx, specs, self.on_change, stop)
                problem = "returned before it was stopped"
            except Exception as exc:
                failure, problem = exc, f"{type(exc).__name__}: {exc}"
            with self._cond:
                if stop.is_set():
                    return
                # It polls no more; started again, it says so again if need be.
                self._polling.pop(stop, None)
                self._hold_polling()
            if self._clock() - began >= most:
                delay = first  # it had been watching well: not a failure in a row
            # Periodic runs cover what happens meanwhile; the check after the
            # restart covers it sooner. The traceback once, not every minute.
            log.warning(
                "watcher of kind %r stopped (%s); watching again in %g s",
                kind.name,
                problem,
                delay,
                exc_info=failure if delay == first else None,
            )
            if stop.wait(delay):
                return
            delay = min(delay * 2, most)
            self.on_change()  # whatever changed while nobody watched

    def _debounce(self) -> None:
        while True:
            with self._cond:
                if not self._wait_until_due():
                    return
                self._dirty = False
                found, expected = self._targets, self._expected
            try:
                changed = self._check(found, expected)
                if changed is None:
                    log.debug("watcher: checked after events; nothing changed")
                    continue
                with self._cond:
                    if self._closed:
                        return
                    self._queued = True
                log.info("watcher: %s changed; running", changed)
                self._request_run()
            except Exception:
                # The debouncer is every watcher's way to a run: it must not die.
                log.exception("watcher: checking after events failed; carrying on")
                with self._cond:
                    self._queued = False

    def _wait_until_due(self) -> bool:
        """Wait (holding _cond) until a check is due; False once stopped."""
        while not self._closed:
            if not self._dirty or self._running or self._queued:
                self._cond.wait()
                continue
            due = min(self._last + self._quiet_s, self._first + self._max_delay_s)
            now = self._clock()
            if now >= due:
                return True
            self._cond.wait(due - now)
        return False

    def _check(self, found: list[Watched], expected: dict[str, Expected]) -> str | None:
        """The id of a watched resource that differs from what the last run left, if any."""
        for target in found:
            wanted = expected.get(target.id, ())
            if wanted == "ignore":
                continue
            if wanted == "retry":
                return target.id
            # Under the kind's timeout, as in a run: a hung command must not
            # stall the one thread every watcher's events go through.
            ctx = self._ctx.with_timeout(target.timeout_s)
            try:
                observed = tuple(target.kind.diff(target.spec, target.kind.read(ctx, target.spec)))
            except Exception as exc:
                log.info("watcher: checking %s failed (%s); running", target.id, exc)
                return target.id  # the run will say what is wrong
            if observed != wanted:
                return target.id
        return None
