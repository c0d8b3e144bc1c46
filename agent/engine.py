"""The engine: runs a catalog's resources and says what became of each.

It owns everything that cuts across kinds, once: ordering by ``require``
and ``subscribe``, refreshes, failure isolation, the noop/audit/enforce modes
and the status vocabulary of :class:`modules.base.Status`. For each resource,
in graph order::

    kind    = kinds(res.kind)                  # unknown kind -> failed
    spec    = kind.parse(res.spec)             # SpecError -> failed, names the field
    state   = kind.read(ctx, spec)
    changes = kind.diff(spec, state)           # [] -> in_sync
    # noop run or audit resource: drifted, and nothing is applied
    kind.apply(ctx, spec, state, changes)      # enforce only
    # verify: read + diff again; still changes -> failed, else repaired
    kind.refresh(ctx, spec, applied)           # enforce only, if something it
                                               # subscribes to was repaired

A resource whose requirement (``require`` or ``subscribe``) failed or was
skipped is skipped without being read. In a dry evaluation (a noop run, or an
audit resource) a requirement that is drifted or unknown was not changed, so
if reading or diffing the dependent then fails, the dependent is ``unknown``
rather than ``failed``: the failure may only be due to the change that was
not made.

``subscribe`` orders and blocks exactly like ``require``, and adds a refresh
(:meth:`modules.base.Kind.refresh`: a restart, a reload) right after the
resource's own apply and verify, at most once per run however many of its
subscriptions changed. Who changed is told in the report, not to the kind:

- some subscription was ``repaired`` in this run, and the resource (enforce
  mode, enforce run) ended ``in_sync`` or ``repaired``: ``refresh`` is called
  with what was applied to the resource in this run. A returned change makes
  the resource ``repaired`` with that change appended, its ``desired`` ending
  in "(notified by <the repaired ids>)"; None leaves the status as it was; a
  raised error makes it ``failed`` ("refresh failed (notified by ...): ...").
- in a dry evaluation (noop run, audit resource) with a subscription
  ``repaired``, ``drifted`` or ``unknown``, or in an enforce run with none
  repaired but some ``drifted``/``unknown`` (an audit notifier): nothing is
  refreshed, and the resource is ``drifted`` with the change
  ``refresh: pending → refreshed (notified by <those ids>)`` after its own.
- subscriptions that are ``in_sync`` never cause a refresh; a resource that
  itself failed, was skipped, held or reverted is not refreshed (a reverted
  notifier is failed, so its subscribers are skipped).

A catalog whose graph is broken (a missing id, a cycle, an id declared twice)
is unusable as a whole: every resource is failed and nothing is read.

Risky kinds (``kind.risky``: firewall, routes) can cut the agent off its
server, so they are applied with confirm-or-revert, like Junos' ``commit
confirmed``. The caller injects ``confirm``, which says whether the server can
be reached over a fresh connection. Before the first risky apply of a run the
engine asks once: if the server is unreachable already, there is no management
path to lose, and risky changes are applied without a guard (and it is logged).
Otherwise, after each risky apply and its verify, it asks again; if the answer
is no, it calls ``kind.restore`` with the state read before the change (the
snapshot) and reports the resource failed ("reverted: lost connection to the
server"), so its dependents are skipped. The result's ``reverted`` flag lets
the caller hold that resource (``hold``) until a new catalog arrives, instead
of cutting itself off again on every run.

Usage::

    results = engine.run(catalog.resources, Context(), noop=True)
    print(engine.summarize(results))   # {"in_sync": 3, "drifted": 1, ...}
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent.errors import CatalogError
from modules import registry
from modules.base import Change, Context, Kind, Mode, Status
from modules.catalog import CatalogResource
from modules.errors import ModuleError

KindLookup = Callable[[str], Kind[Any, Any]]

# Requirement statuses that stop a dependent from being evaluated at all.
_BLOCKING = (Status.FAILED, Status.SKIPPED)
# Requirement statuses that mean "would have been changed, but was not".
_UNAPPLIED = (Status.DRIFTED, Status.UNKNOWN)
# Subscription statuses that call for a refresh (made, or only pending when dry).
_CHANGING = (Status.REPAIRED, *_UNAPPLIED)


@dataclasses.dataclass(frozen=True)
class ResourceResult:
    """What became of one resource in one run."""

    id: str  # "kind/name"
    kind: str
    name: str
    manifest: str
    status: Status
    changes: tuple[Change, ...] = ()  # for repaired: what was changed; for drifted: what differs
    error: str = ""  # why, for failed, skipped and unknown
    duration_s: float = 0.0
    controls: tuple[str, ...] = ()
    #: Confirm-or-revert found the server unreachable after this change and
    #: restored (or tried to restore) the state from before it.
    reverted: bool = False


#: Says whether the server can be reached over a fresh connection right now.
Confirm = Callable[[], bool]

REVERTED = "reverted: lost connection to the server"


def run(
    resources: Sequence[CatalogResource],
    ctx: Context,
    *,
    noop: bool = False,
    kinds: KindLookup = registry.get,
    clock: Callable[[], float] = time.monotonic,
    confirm: Confirm | None = None,
    hold: frozenset[str] = frozenset(),
    revision: int = 0,
) -> list[ResourceResult]:
    """Run ``resources`` in require order; one result per resource, in catalog order.

    ``confirm`` guards risky kinds (None: no confirm-or-revert, as when there is
    no server). Resources whose id is in ``hold`` were reverted earlier for
    catalog ``revision``: an enforce run reports them failed without applying.
    Never raises for anything a kind does: every failure becomes a result.
    """
    try:
        order = _order(resources)
    except CatalogError as exc:
        return [_log(ctx, _unusable(res, exc)) for res in resources]
    guard = _Guard(ctx.log, confirm)
    runner = _Runner(ctx, noop, kinds, clock, guard, hold, revision)
    done: dict[str, ResourceResult] = {}
    for res in order:
        done[res.id] = _log(ctx, runner.evaluate(res, done))
    return [done[res.id] for res in resources]


def summarize(results: Iterable[ResourceResult]) -> dict[str, int]:
    """How many results have each status; every status is present, in vocabulary order."""
    counts = Counter(result.status for result in results)
    return {status.value: counts[status] for status in Status}


# --- ordering ---------------------------------------------------------------


def _order(resources: Sequence[CatalogResource]) -> list[CatalogResource]:
    """Resources in graph order, ties broken by catalog order; CatalogError if none exists."""
    index = _index(resources)
    requires = [_requirements(res, index) for res in resources]
    order = _toposort(requires)
    if len(order) < len(resources):
        cycle = _find_cycle(requires, set(order))
        only_require = all(
            resources[b].id in resources[a].require for a, b in itertools.pairwise(cycle)
        )
        what = "require cycle" if only_require else "require/subscribe cycle"
        raise CatalogError(f"{what}: " + " → ".join(resources[i].id for i in cycle))
    return [resources[i] for i in order]


def _index(resources: Sequence[CatalogResource]) -> dict[str, int]:
    """Each id's position in the catalog; CatalogError if an id is declared twice."""
    index: dict[str, int] = {}
    for position, res in enumerate(resources):
        if res.id in index:
            raise CatalogError(f"{res.id} is declared more than once")
        index[res.id] = position
    return index


def _requirements(res: CatalogResource, index: dict[str, int]) -> frozenset[int]:
    """Positions of what ``res`` requires or subscribes to; CatalogError for a missing id."""
    for verb, ids in (("requires", res.require), ("subscribes to", res.subscribe)):
        for required in ids:
            if required not in index:
                raise CatalogError(f"{res.id} {verb} {required}, which is not in the catalog")
    return frozenset(index[required] for required in (*res.require, *res.subscribe))


def _toposort(requires: list[frozenset[int]]) -> list[int]:
    """Kahn's algorithm, always taking the earliest ready position; leaves out cycles."""
    dependents: list[list[int]] = [[] for _ in requires]
    for node, reqs in enumerate(requires):
        for req in reqs:
            dependents[req].append(node)
    waiting = [len(reqs) for reqs in requires]
    ready = [node for node, count in enumerate(waiting) if count == 0]  # sorted: a valid heap
    order: list[int] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    return order


def _find_cycle(requires: list[frozenset[int]], ordered: set[int]) -> list[int]:
    """One require cycle among the positions Kahn's algorithm could not order.

    Every such position still requires another such position, so following
    requirements from any of them must come back round.
    """
    node = min(set(range(len(requires))) - ordered)
    path: list[int] = []
    while node not in path:
        path.append(node)
        node = min(requires[node] - ordered)
    return [*path[path.index(node) :], node]


# --- evaluating one resource ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Outcome:
    status: Status
    changes: tuple[Change, ...] = ()
    error: str = ""
    reverted: bool = False


class _Guard:
    """Confirm-or-revert's view of the server within one run.

    ``armed`` is asked just before a risky apply: the first time, it checks
    that the server is reachable at all, since a revert is only right when the
    change itself may have cut the connection.
    """

    def __init__(self, log: logging.Logger, confirm: Confirm | None) -> None:
        self._log = log
        self._confirm = confirm
        self._reachable_before: bool | None = None if confirm is not None else False

    def armed(self, res_id: str) -> bool:
        if self._reachable_before is None:
            self._reachable_before = self.reachable(res_id)
            if not self._reachable_before:
                self._log.warning(
                    "%s: server not reachable before the change; applying risky changes "
                    "in this run without confirm-or-revert (no management path to lose)",
                    res_id,
                )
        return self._reachable_before

    def reachable(self, res_id: str) -> bool:
        assert self._confirm is not None
        try:
            return bool(self._confirm())
        except Exception:  # a broken probe proves nothing reachable
            self._log.exception("%s: checking that the server is reachable failed", res_id)
            return False


@dataclasses.dataclass(frozen=True)
class _Runner:
    """Evaluates resources one at a time with one run's settings."""

    ctx: Context
    noop: bool
    kinds: KindLookup
    clock: Callable[[], float]
    guard: _Guard
    hold: frozenset[str]
    revision: int

    def evaluate(self, res: CatalogResource, done: dict[str, ResourceResult]) -> ResourceResult:
        """The result of ``res``, given the results of everything it requires."""
        start = self.clock()
        outcome = self._outcome(res, done)
        return _result(res, outcome, duration_s=self.clock() - start)

    def _outcome(self, res: CatalogResource, done: dict[str, ResourceResult]) -> _Outcome:
        required = [done[req] for req in dict.fromkeys((*res.require, *res.subscribe))]
        blocked = [req for req in required if req.status in _BLOCKING]
        if blocked:
            return _Outcome(Status.SKIPPED, error=_skip_reason(res, blocked))
        try:
            kind = self.kinds(res.kind)
            spec = kind.parse(res.spec)
        except Exception as exc:
            return self._failed(res, exc)
        subscribed = [done[req] for req in dict.fromkeys(res.subscribe)]
        if self.noop or res.mode is Mode.AUDIT:
            pending = [req.id for req in required if req.status in _UNAPPLIED]
            own = self._dry(res, kind, spec, pending)
            return _refresh_pending(own, [s.id for s in subscribed if s.status in _CHANGING])
        if res.id in self.hold:
            return _Outcome(Status.FAILED, error=self._held())
        return self._notified(res, kind, spec, self._enforce(res, kind, spec), subscribed)

    def _notified(
        self,
        res: CatalogResource,
        kind: Kind[Any, Any],
        spec: Any,
        own: _Outcome,
        subscribed: list[ResourceResult],
    ) -> _Outcome:
        """``own`` (an enforced outcome), after the refresh its subscriptions call for."""
        changed = [s.id for s in subscribed if s.status is Status.REPAIRED]
        if own.status not in (Status.IN_SYNC, Status.REPAIRED):
            return own  # failed (or reverted): a broken resource is not restarted
        if not changed:
            return _refresh_pending(own, [s.id for s in subscribed if s.status in _UNAPPLIED])
        by = _notified_by(changed)
        if not kind.refreshable:  # only a catalog the server would refuse today
            error = f"cannot refresh ({by}): kind {res.kind!r} is not refreshable"
            return _Outcome(Status.FAILED, own.changes, error)
        applied = own.changes if own.status is Status.REPAIRED else ()
        try:
            change = kind.refresh(self.ctx, spec, applied)
        except Exception as exc:
            failed = self._failed(res, exc, own.changes)
            return dataclasses.replace(failed, error=f"refresh failed ({by}): {failed.error}")
        if change is None:
            return own
        note = f"{change.desired} ({by})" if change.desired else by
        refreshed = Change(change.field, change.observed, note)
        return _Outcome(Status.REPAIRED, (*own.changes, refreshed))

    def _held(self) -> str:
        at = f" at revision {self.revision}" if self.revision else ""
        return f"held: reverted earlier{at}; waiting for a new catalog"

    def _dry(
        self, res: CatalogResource, kind: Kind[Any, Any], spec: Any, pending: list[str]
    ) -> _Outcome:
        """Read and diff only; a failure with unapplied requirements is unknown."""
        try:
            _, changes = self._observe(kind, spec)
        except ModuleError as exc:
            if not pending:
                return self._failed(res, exc)
            detail = f"{exc} (pending changes not applied: {', '.join(pending)})"
            return _Outcome(Status.UNKNOWN, error=detail)
        except Exception as exc:
            return self._failed(res, exc)
        return _Outcome(Status.DRIFTED, changes) if changes else _Outcome(Status.IN_SYNC)

    def _enforce(self, res: CatalogResource, kind: Kind[Any, Any], spec: Any) -> _Outcome:
        """Read, diff, apply, and check that the apply really converged."""
        try:
            state, changes = self._observe(kind, spec)
        except Exception as exc:
            return self._failed(res, exc)
        if not changes:
            return _Outcome(Status.IN_SYNC)
        guarded = kind.risky and self.guard.armed(res.id)
        outcome = self._apply(res, kind, spec, state, changes)
        if guarded and not self.guard.reachable(res.id):
            return self._revert(res, kind, spec, state, outcome)
        return outcome

    def _apply(
        self,
        res: CatalogResource,
        kind: Kind[Any, Any],
        spec: Any,
        state: Any,
        changes: tuple[Change, ...],
    ) -> _Outcome:
        try:
            kind.apply(self.ctx, spec, state, list(changes))
            _, remaining = self._observe(kind, spec)
        except Exception as exc:
            return self._failed(res, exc, changes)
        return _verified(changes, remaining)

    def _revert(
        self,
        res: CatalogResource,
        kind: Kind[Any, Any],
        spec: Any,
        snapshot: Any,
        applied: _Outcome,
    ) -> _Outcome:
        """Put back ``snapshot`` after a change that left the server unreachable."""
        also = f" (the change itself: {applied.status}: {applied.error})" if applied.error else ""
        try:
            kind.restore(self.ctx, spec, snapshot)
        except Exception as exc:
            error = (
                f"revert FAILED: lost connection to the server after the change, and "
                f"restoring the previous state failed: {type(exc).__name__}: {exc}{also}"
            )
            self.ctx.log.error("%s: %s", res.id, error, exc_info=exc)
            return _Outcome(Status.FAILED, applied.changes, error, reverted=True)
        self.ctx.log.warning("%s: %s; previous state restored", res.id, REVERTED)
        return _Outcome(Status.FAILED, applied.changes, REVERTED + also, reverted=True)

    def _observe(self, kind: Kind[Any, Any], spec: Any) -> tuple[Any, tuple[Change, ...]]:
        state = kind.read(self.ctx, spec)
        return state, tuple(kind.diff(spec, state))

    def _failed(
        self, res: CatalogResource, exc: Exception, changes: tuple[Change, ...] = ()
    ) -> _Outcome:
        """A failure from a kind; anything but a ModuleError is a bug, logged with its traceback."""
        if isinstance(exc, ModuleError):
            return _Outcome(Status.FAILED, changes, str(exc))
        self.ctx.log.error("%s: unexpected error in kind %r", res.id, res.kind, exc_info=exc)
        return _Outcome(Status.FAILED, changes, f"{type(exc).__name__}: {exc}")


def _verified(changes: tuple[Change, ...], remaining: tuple[Change, ...]) -> _Outcome:
    """Repaired if nothing differs any more after apply, else failed naming what still does."""
    if not remaining:
        return _Outcome(Status.REPAIRED, changes)
    detail = "; ".join(str(change) for change in remaining)
    return _Outcome(Status.FAILED, changes, f"still differs after apply: {detail}")


def _refresh_pending(own: _Outcome, notifiers: list[str]) -> _Outcome:
    """``own``, plus the refresh that ``notifiers`` call for but this run does not make."""
    if not notifiers or own.status not in (Status.IN_SYNC, Status.REPAIRED, Status.DRIFTED):
        return own
    pending = Change("refresh", "pending", f"refreshed ({_notified_by(notifiers)})")
    return _Outcome(Status.DRIFTED, (*own.changes, pending))


def _notified_by(ids: list[str]) -> str:
    return f"notified by {', '.join(ids)}"


def _skip_reason(res: CatalogResource, blocked: list[ResourceResult]) -> str:
    """Why a dependent is skipped, naming each requirement that stopped it."""
    reasons = []
    for req in blocked:
        verb = "requires" if req.id in res.require else "subscribes to"
        if req.status is Status.FAILED:
            reasons.append(f"{verb} {req.id}, which failed")
        else:
            reasons.append(f"{verb} {req.id}, which was skipped: {req.error}")
    return "; ".join(reasons)


# --- results ----------------------------------------------------------------


def _result(res: CatalogResource, outcome: _Outcome, duration_s: float = 0.0) -> ResourceResult:
    return ResourceResult(
        id=res.id,
        kind=res.kind,
        name=res.name,
        manifest=res.manifest,
        status=outcome.status,
        changes=outcome.changes,
        error=outcome.error,
        duration_s=duration_s,
        controls=res.controls,
        reverted=outcome.reverted,
    )


def _unusable(res: CatalogResource, exc: CatalogError) -> ResourceResult:
    return _result(res, _Outcome(Status.FAILED, error=f"catalog unusable: {exc}"))


def _log(ctx: Context, result: ResourceResult) -> ResourceResult:
    """One line for every resource that is not in sync; returns ``result`` for chaining."""
    if result.status is not Status.IN_SYNC:
        changes = "; ".join(str(change) for change in result.changes)
        detail = " | ".join(part for part in (changes, result.error) if part)
        ctx.log.info("%s: %s%s", result.id, result.status, f" ({detail})" if detail else "")
    return result
