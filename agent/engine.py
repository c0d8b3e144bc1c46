"""The engine: runs a catalog's resources and says what became of each.

It owns everything that cuts across kinds, once: ordering by ``require``
and ``subscribe``, refreshes, failure isolation, the noop/audit/enforce modes
and the status vocabulary of :class:`modules.base.Status`. For each resource,
in graph order (resources of a batchable kind may be gathered earlier, see
below)::

    kind    = kinds(res.kind)                  # unknown kind -> failed
    spec    = kind.parse(res.spec)             # SpecError -> failed, names the field
    state   = kind.read(ctx, spec)
    changes = kind.diff(spec, state)           # [] -> in_sync
    # noop run or audit resource: drifted, and nothing is applied
    kind.apply(ctx, spec, state, changes)      # enforce only
    # verify: read + diff again; still changes -> failed, else repaired
    kind.refresh(ctx, spec, applied)           # enforce only, if something it
                                               # subscribes to was repaired
    observed = kind.describe(ctx, spec, state) # the newest state read; for the report

A resource whose requirement (``require`` or ``subscribe``) failed or was
skipped is skipped without being read. In a dry evaluation (a noop run, or an
audit resource) a requirement that is drifted or unknown was not changed, so
if reading or diffing the dependent then fails, the dependent is ``unknown``
rather than ``failed``: the failure may only be due to the change that was
not made. A noop run, which predicts what a run would do (``plumb plan``),
also calls such a dependent ``unknown`` when it is in sync now, never "no
change"; an audit resource in an enforce run says how it is now.

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

``run(..., audit=True)`` evaluates every resource as audit, whatever mode its
catalog gives it: the agent's audit lock (agent/auditlock.py). The run is
otherwise an ordinary one (not noop): in-sync resources converge, drifted
ones are reported drifted, nothing is applied, refreshed or reverted, and
held resources are read like any audit resource.

A catalog whose graph is broken (a missing id, a cycle, an id declared twice)
is unusable as a whole: every resource is failed and nothing is read.

Risky kinds (:class:`modules.base.Risky`: firewall, routes) can cut the agent off its
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

Batchable kinds (:class:`modules.base.Batchable`: packages) are changed together, in one
:meth:`modules.base.Kind.apply_batch` (one apt or dnf transaction). In an
enforce run, when the engine reaches a resource of a batchable kind that it
would enforce now, it gathers every other resource of that kind not evaluated
yet that it would enforce now too: mode ``enforce``, not held, and everything
it requires or subscribes to already evaluated and neither failed nor
skipped. Nothing such a resource waits on is pending, so evaluating it before
its place in the graph order breaks no ordering; one that still waits on
something keeps its place (and may gather a batch of its own then). Each is
parsed, read and diffed on its own (a failure fails that one alone); those
with changes are applied in ONE ``apply_batch`` (a lone one with ``apply``);
then each is verified, refreshed and described on its own, exactly as after
a single apply, and gets its own result. If ``apply_batch`` raises a
ModuleError, the engine retries: it reads each resource again and applies the
ones that still differ one by one with ``apply``, so one bad package fails
alone with the package manager's message and the rest still converge (the
batch's error is logged). Any other exception from ``apply_batch`` is a bug
and fails the whole batch. Noop runs and audit resources are never batched
(nothing is applied), nor held ones, nor risky kinds (they cannot be
batchable: confirm-or-revert works one resource at a time).

Timeouts: every resource is evaluated under a deadline
(:attr:`modules.base.Context.deadline`), its own ``timeout`` from the catalog
or else its kind's :attr:`~modules.base.Kind.timeout_s`, counted from when the
engine starts on it. One deadline covers all of it: read, diff, apply, the
verifying read, a refresh and the read after it. A command still running at
the deadline is killed with its process group (:mod:`modules.executor`) and
the resource fails with "<command> timed out after N s: <its output so far>";
nothing else of the run is held up. In a batch, each member's own steps before
the shared ``apply_batch`` (read, diff) and after it (verify, refresh, the
one-by-one retry) run under that member's timeout, and ``apply_batch`` itself
under the largest timeout of the batch. A batch that timed out is not retried
one by one: the package manager was killed mid-transaction, and each alone
would very likely hang the same way; each member is read again and reported
repaired if the batch got it done before the kill, failed with the timeout
otherwise. A revert (``restore``) gets a fresh deadline of the resource's
timeout, so a change that used up the time still leaves the way back time.

Retries: only a :class:`modules.errors.Busy` failure is retried, a condition
only the kind can recognise as transient (another apt, dpkg or rpm holds the
lock). The whole attempt is made again, from the read (the lock holder may
have changed the very package), after 0.5 s, then 1, 2, 4 and from then on 8 s
(:data:`BUSY_FIRST_BACKOFF_S`, doubling to :data:`BUSY_MAX_BACKOFF_S`), for
as long as the deadline leaves time for another attempt after the wait. Then
the resource fails with the last refusal and "(still busy after N tries in M
s)", and its result says ``transient`` so that the watchers try it again on
the next event. A busy ``apply_batch`` goes one by one, the first resource
waiting for the lock. Nothing else is retried: a read or apply that fails for
any other reason is reported as it is (the next run, or the watcher, tries
again).

A result's ``duration_s`` is the time spent on that resource alone (parse,
read, diff, apply, verify, refresh, describe), plus in a batch an even share
of the ``apply_batch`` call (also of a failed one, before the retry): the
shares of one batch add up to the time it took.

After everything else, the engine asks the kind to describe the newest state
it read of each resource (:meth:`modules.base.Kind.describe`: a service's
pid, memory, uptime) and carries it in the result as ``observed``; after a
refresh it reads the resource again for that. A describe that raises is
logged and leaves ``observed`` empty; it never fails the resource.

Usage::

    results = engine.run(catalog.resources, Context(), noop=True)
    print(engine.summarize(results))   # {"in_sync": 3, "drifted": 1, ...}
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from agent.errors import CatalogError
from modules import registry
from modules.base import Batchable, Change, Context, Kind, Mode, Refreshable, Risky, Status
from modules.catalog import CatalogResource
from modules.errors import Busy, ModuleError, TimedOut

KindLookup = Callable[[str], Kind[Any, Any]]

# Requirement statuses that stop a dependent from being evaluated at all.
_BLOCKING = (Status.FAILED, Status.SKIPPED)
# Requirement statuses that mean "would have been changed, but was not".
_UNAPPLIED = (Status.DRIFTED, Status.UNKNOWN)
# Subscription statuses that call for a refresh (made, or only pending when dry).
_CHANGING = (Status.REPAIRED, *_UNAPPLIED)

#: Waiting for a busy package manager (Busy): the first back-off, doubled
#: after every further refusal up to the cap, for as long as the resource's
#: deadline leaves time for another try after the wait.
BUSY_FIRST_BACKOFF_S = 0.5
BUSY_MAX_BACKOFF_S = 8.0


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
    #: What the resource looks like now (:meth:`modules.base.Kind.describe`);
    #: empty when the kind describes nothing or no current state was read.
    observed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Failed on a condition the kind called transient (:class:`modules.errors.Busy`)
    #: that outlasted the engine's retries: trying again later may well work.
    transient: bool = False


#: Says whether the server can be reached over a fresh connection right now.
Confirm = Callable[[], bool]
#: Told of every change just before it is applied (see run).
Intend = Callable[[CatalogResource, Sequence[Change]], None]

REVERTED = "reverted: lost connection to the server"


def run(
    resources: Sequence[CatalogResource],
    ctx: Context,
    *,
    noop: bool = False,
    kinds: KindLookup = registry.get,
    clock: Callable[[], float] | None = None,
    confirm: Confirm | None = None,
    hold: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    intend: Intend | None = None,
    audit: bool = False,
) -> list[ResourceResult]:
    """Run ``resources`` in require order; one result per resource, in catalog order.

    ``confirm`` guards risky kinds (None: no confirm-or-revert, as when there is
    no server). ``hold`` maps ids the caller holds back to why (reverted
    earlier at this revision, flapping): an enforce run reports each failed
    with that reason, without reading or applying it. ``clock`` times results
    (default: the context's, which deadlines are on too); ``sleep`` waits out a
    busy package manager. ``intend(res, changes)`` is told, just before, of
    every change about to be applied, so that a run killed half-way can be
    accounted for afterwards (the runner's intent journal). ``audit``: every
    resource in audit mode, whatever its own (the agent's audit lock).
    Never raises for anything a kind does: every failure becomes a result.
    """
    if audit:
        resources = [dataclasses.replace(res, mode=Mode.AUDIT) for res in resources]
    try:
        order = _order(resources)
    except CatalogError as exc:
        return [_log(ctx, _unusable(res, exc)) for res in resources]
    guard = _Guard(ctx.log, confirm)
    evaluator = _Evaluator(
        ctx, noop, kinds, clock or ctx.clock, guard, dict(hold or {}), sleep, intend
    )
    done: dict[str, ResourceResult] = {}
    for position, res in enumerate(order):
        if res.id in done:
            continue  # evaluated earlier, in a batch
        batch = evaluator.batch(res, order[position + 1 :], done)
        results = (
            evaluator.evaluate_batch(*batch, done) if batch else [evaluator.evaluate(res, done)]
        )
        for result in results:
            done[result.id] = _log(ctx, result)
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


#: ``_Outcome.state`` when there is no current state of the resource to describe.
_UNREAD: Any = object()


@dataclasses.dataclass(frozen=True)
class _Outcome:
    status: Status
    changes: tuple[Change, ...] = ()
    error: str = ""
    reverted: bool = False
    #: The newest state read of the resource, unless this run may have changed
    #: it since (a failed apply, a revert); what describe is asked about.
    state: Any = _UNREAD
    observed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Failed on a Busy: worth another try after a back-off.
    transient: bool = False


@dataclasses.dataclass
class _Item:
    """One resource of a batch on its way through it."""

    res: CatalogResource
    spent: float = 0.0  # seconds charged to it so far
    spec: Any = None
    state: Any = _UNREAD
    changes: tuple[Change, ...] = ()
    outcome: _Outcome | None = None  # set when its own read, apply and verify are over
    #: Its evaluator for what follows the batch's shared step (verify, refresh,
    #: describe), under a deadline of its own; made when that part begins.
    after: _Evaluator | None = None


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
class _Evaluator:
    """Evaluates resources, one at a time or in batches, with one run's settings."""

    ctx: Context
    noop: bool
    kinds: KindLookup
    clock: Callable[[], float]
    guard: _Guard
    hold: Mapping[str, str]  # id -> why it is held back
    sleep: Callable[[float], None]
    intend: Intend | None = None

    def evaluate(self, res: CatalogResource, done: dict[str, ResourceResult]) -> ResourceResult:
        """The result of ``res``, given the results of everything it requires."""
        start = self.clock()
        outcome = self._outcome(res, done)
        return _result(res, outcome, duration_s=self.clock() - start)

    # --- deadlines and a busy package manager ---------------------------------

    def _within(self, limit_s: float) -> _Evaluator:
        """This evaluator, its context's deadline ``limit_s`` seconds from now."""
        return dataclasses.replace(self, ctx=self.ctx.with_timeout(limit_s))

    def _for(self, res: CatalogResource, kind: Kind[Any, Any]) -> _Evaluator:
        """This evaluator under ``res``'s own deadline: its ``timeout``, or its kind's."""
        return self._within(_limit(res, kind))

    def _patiently(
        self,
        res: CatalogResource,
        first: Callable[[], _Outcome | None],
        again: Callable[[], _Outcome | None] | None = None,
    ) -> _Outcome | None:
        """``first()``; while its outcome is a Busy failure, ``again()`` after a back-off.

        Only while the deadline leaves time for another try once the wait is
        over; then the last failure, saying how long it waited. None (no
        failure) is passed through.
        """
        outcome = first()
        delay, tries, start = BUSY_FIRST_BACKOFF_S, 1, self.ctx.clock()
        while outcome is not None and outcome.transient:
            remaining = self.ctx.remaining_s()
            if remaining is None or remaining <= delay:
                waited = self.ctx.clock() - start
                error = f"{outcome.error} (still busy after {tries} tries in {waited:.1f} s)"
                return dataclasses.replace(outcome, error=error)
            self.ctx.log.info("%s: %s; trying again in %g s", res.id, outcome.error, delay)
            self.sleep(delay)
            delay, tries = min(delay * 2, BUSY_MAX_BACKOFF_S), tries + 1
            outcome = (again or first)()
        return outcome

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
        if res.id in self.hold and not (self.noop or res.mode is Mode.AUDIT):
            return _Outcome(Status.FAILED, error=self.hold[res.id])
        return self._for(res, kind)._evaluated(res, kind, spec, required, done)

    def _evaluated(
        self,
        res: CatalogResource,
        kind: Kind[Any, Any],
        spec: Any,
        required: list[ResourceResult],
        done: dict[str, ResourceResult],
    ) -> _Outcome:
        """Read, diff and (enforcing) apply and refresh ``res``, under its deadline."""
        if self.noop or res.mode is Mode.AUDIT:
            pending = [req.id for req in required if req.status in _UNAPPLIED]
            own = self._dry(res, kind, spec, pending)
            subscribed = [done[req] for req in dict.fromkeys(res.subscribe)]
            notifiers = [s.id for s in subscribed if s.status in _CHANGING]
            if self.noop and own.status is Status.IN_SYNC and not notifiers:
                own = _not_known_yet(own, pending)
            return self._described(res, kind, spec, _refresh_pending(own, notifiers))
        return self._finish(res, kind, spec, self._enforce(res, kind, spec), done)

    def _finish(
        self,
        res: CatalogResource,
        kind: Kind[Any, Any],
        spec: Any,
        own: _Outcome,
        done: dict[str, ResourceResult],
    ) -> _Outcome:
        """``own`` (an enforced outcome), refreshed if need be, with what it looks like now."""
        subscribed = [done[req] for req in dict.fromkeys(res.subscribe)]
        return self._described(res, kind, spec, self._notified(res, kind, spec, own, subscribed))

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
        if not isinstance(kind, Refreshable):  # only a catalog the server would refuse
            error = f"cannot refresh ({by}): kind {res.kind!r} is not refreshable"
            return dataclasses.replace(own, status=Status.FAILED, error=error)
        applied = own.changes if own.status is Status.REPAIRED else ()
        try:
            change = kind.refresh(self.ctx, spec, applied)
        except Exception as exc:
            failed = self._failed(res, exc, own.changes)
            error = f"refresh failed ({by}): {failed.error}"
            return dataclasses.replace(failed, error=error, state=self._reread(res, kind, spec))
        if change is None:
            return own
        note = f"{change.desired} ({by})" if change.desired else by
        refreshed = Change(change.field, change.observed, note)
        state = self._reread(res, kind, spec)
        return _Outcome(Status.REPAIRED, (*own.changes, refreshed), state=state)

    def _reread(self, res: CatalogResource, kind: Kind[Any, Any], spec: Any) -> Any:
        """The state after a refresh, for describe (a restart makes a new process)."""
        try:
            return kind.read(self.ctx, spec)
        except Exception as exc:
            self.ctx.log.warning("%s: reading it again after the refresh failed: %s", res.id, exc)
            return _UNREAD

    def _described(
        self, res: CatalogResource, kind: Kind[Any, Any], spec: Any, outcome: _Outcome
    ) -> _Outcome:
        """``outcome`` with what the kind says its state looks like; never fails it."""
        if outcome.state is _UNREAD:
            return outcome
        try:
            described = kind.describe(self.ctx, spec, outcome.state)
            observed = {str(key): str(value) for key, value in described.items()}
        except Exception as exc:
            self.ctx.log.warning(
                "%s: describing it for the report failed; reported without observed state",
                res.id,
                exc_info=exc,
            )
            return outcome
        return dataclasses.replace(outcome, observed=observed)

    def _dry(
        self, res: CatalogResource, kind: Kind[Any, Any], spec: Any, pending: list[str]
    ) -> _Outcome:
        """Read and diff only (again while the package manager is busy)."""
        outcome = self._patiently(res, lambda: self._dry_once(res, kind, spec, pending))
        assert outcome is not None
        return outcome

    def _dry_once(
        self, res: CatalogResource, kind: Kind[Any, Any], spec: Any, pending: list[str]
    ) -> _Outcome:
        """Read and diff only; a failure with unapplied requirements is unknown."""
        try:
            state, changes = self._observe(kind, spec)
        except ModuleError as exc:
            if not pending or isinstance(exc, Busy):
                return self._failed(res, exc)
            detail = f"{exc} (pending changes not applied: {', '.join(pending)})"
            return _Outcome(Status.UNKNOWN, error=detail)
        except Exception as exc:
            return self._failed(res, exc)
        status = Status.DRIFTED if changes else Status.IN_SYNC
        return _Outcome(status, changes, state=state)

    def _enforce(self, res: CatalogResource, kind: Kind[Any, Any], spec: Any) -> _Outcome:
        """Read, diff, apply, verify; all of it again while the package manager is busy."""
        outcome = self._patiently(res, lambda: self._enforce_once(res, kind, spec))
        assert outcome is not None
        return outcome

    def _enforce_once(self, res: CatalogResource, kind: Kind[Any, Any], spec: Any) -> _Outcome:
        """Read, diff, apply, and check that the apply really converged."""
        try:
            state, changes = self._observe(kind, spec)
        except Exception as exc:
            return self._failed(res, exc)
        if not changes:
            return _Outcome(Status.IN_SYNC, state=state)
        risky = kind if isinstance(kind, Risky) else None
        guarded = risky is not None and self.guard.armed(res.id)
        outcome = self._apply(res, kind, spec, state, changes)
        if risky is not None and guarded and not self.guard.reachable(res.id):
            return self._revert(res, risky, spec, state, outcome)
        return outcome

    def _apply(
        self,
        res: CatalogResource,
        kind: Kind[Any, Any],
        spec: Any,
        state: Any,
        changes: tuple[Change, ...],
    ) -> _Outcome:
        if self.intend is not None:
            self.intend(res, _sealed(res, changes))
        try:
            kind.apply(self.ctx, spec, state, list(changes))
        except Exception as exc:
            return self._failed(res, exc, changes)
        return self._verify(res, kind, spec, changes)

    def _verify(
        self, res: CatalogResource, kind: Kind[Any, Any], spec: Any, changes: tuple[Change, ...]
    ) -> _Outcome:
        """Read and diff again after ``changes`` were applied: repaired, or failed saying why."""
        try:
            state, remaining = self._observe(kind, spec)
        except Exception as exc:
            return self._failed(res, exc, changes)
        return _verified(changes, remaining, state)

    def _revert(
        self,
        res: CatalogResource,
        kind: Risky[Any, Any],
        spec: Any,
        snapshot: Any,
        applied: _Outcome,
    ) -> _Outcome:
        """Put back ``snapshot`` after a change that left the server unreachable.

        Under a deadline of its own: a change that used up the resource's time
        must not leave the way back no time at all.
        """
        also = f" (the change itself: {applied.status}: {applied.error})" if applied.error else ""
        ctx = self.ctx
        if ctx.deadline is not None:
            ctx = ctx.with_timeout(ctx.deadline.limit_s)
        try:
            kind.restore(ctx, spec, snapshot)
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
            return _Outcome(Status.FAILED, changes, str(exc), transient=isinstance(exc, Busy))
        self.ctx.log.error("%s: unexpected error in kind %r", res.id, res.kind, exc_info=exc)
        return _Outcome(Status.FAILED, changes, f"{type(exc).__name__}: {exc}")

    # --- batches ------------------------------------------------------------

    def batch(
        self,
        res: CatalogResource,
        rest: Sequence[CatalogResource],
        done: dict[str, ResourceResult],
    ) -> tuple[Kind[Any, Any], list[CatalogResource]] | None:
        """``res`` and what of ``rest`` to apply in one batch with it; None: evaluate it alone.

        ``rest`` is what comes after ``res`` in graph order.
        """
        if self.noop or not self._enforceable_now(res, done):
            return None
        try:
            kind = self.kinds(res.kind)
        except Exception:
            return None  # evaluating it alone says why
        if not isinstance(kind, Batchable):
            return None
        others = [o for o in rest if o.kind == res.kind and self._enforceable_now(o, done)]
        return (kind, [res, *others]) if others else None

    def _enforceable_now(self, res: CatalogResource, done: dict[str, ResourceResult]) -> bool:
        """Whether ``res`` would be read and applied if it were evaluated right now."""
        if res.id in done or res.mode is not Mode.ENFORCE or res.id in self.hold:
            return False
        required = (*res.require, *res.subscribe)
        return all(req in done and done[req].status not in _BLOCKING for req in required)

    def evaluate_batch(
        self,
        kind: Kind[Any, Any],
        members: list[CatalogResource],
        done: dict[str, ResourceResult],
    ) -> list[ResourceResult]:
        """The results of ``members`` (in that order), their changes applied in one batch."""
        items = [_Item(res) for res in members]
        for item in items:
            with self._charged(item):
                self._for(item.res, kind)._prepare(kind, item)
        pending = [item for item in items if item.outcome is None]
        if len(pending) == 1:
            [item] = pending
            with self._charged(item):
                item.outcome = self._apply_lone(kind, item)
        elif pending:
            self._apply_together(kind, pending)
        results = []
        for item in items:
            assert item.outcome is not None
            with self._charged(item):
                after = self._after(kind, item)
                outcome = after._finish(item.res, kind, item.spec, item.outcome, done)
            results.append(_result(item.res, outcome, duration_s=item.spent))
        return results

    def _after(self, kind: Kind[Any, Any], item: _Item) -> _Evaluator:
        """``item``'s evaluator for its own steps after the batch's shared one."""
        if item.after is None:
            item.after = self._for(item.res, kind)
        return item.after

    @contextlib.contextmanager
    def _charged(self, *items: _Item) -> Iterator[None]:
        """Charge the time spent in the block to ``items``, in even shares."""
        start = self.clock()
        try:
            yield
        finally:
            share = (self.clock() - start) / len(items)
            for item in items:
                item.spent += share

    def _prepare(self, kind: Kind[Any, Any], item: _Item) -> None:
        """Parse, read and diff ``item``; its outcome is set unless it has changes to apply."""
        item.outcome = self._patiently(item.res, lambda: self._prepare_once(kind, item))

    def _prepare_once(self, kind: Kind[Any, Any], item: _Item) -> _Outcome | None:
        try:
            item.spec = kind.parse(item.res.spec)
            item.state, item.changes = self._observe(kind, item.spec)
        except Exception as exc:
            return self._failed(item.res, exc)
        return None if item.changes else _Outcome(Status.IN_SYNC, state=item.state)

    def _apply_lone(self, kind: Kind[Any, Any], item: _Item) -> _Outcome:
        """The one resource of a batch with changes: ``apply``, as on its own."""
        after = self._after(kind, item)
        outcome = after._patiently(
            item.res,
            lambda: after._apply(item.res, kind, item.spec, item.state, item.changes),
            lambda: after._apply_alone(kind, item),
        )
        assert outcome is not None
        return outcome

    def _apply_together(self, kind: Kind[Any, Any], pending: list[_Item]) -> None:
        """One ``apply_batch`` for ``pending``, then each verified; one by one if it fails.

        The batch's deadline is the largest of its members' timeouts.
        """
        ids = ", ".join(item.res.id for item in pending)
        self.ctx.log.info("applying %d %s resources in one batch: %s", len(pending), kind.name, ids)
        batch = [(item.spec, item.state, list(item.changes)) for item in pending]
        failure: Exception | None = None
        assert isinstance(kind, Batchable)  # batch() gathers batchable kinds only
        together = self._within(max(_limit(item.res, kind) for item in pending))
        if self.intend is not None:
            for item in pending:
                self.intend(item.res, _sealed(item.res, item.changes))
        with self._charged(*pending):
            try:
                kind.apply_batch(together.ctx, batch)
            except Exception as exc:
                failure = exc
        if isinstance(failure, TimedOut):
            self.ctx.log.warning(
                "applying %s in one batch timed out (%s); not trying them one by one", ids, failure
            )
        elif isinstance(failure, ModuleError):
            self.ctx.log.warning(
                "applying %s in one batch failed (%s); applying them one by one", ids, failure
            )
        elif failure is not None:
            self.ctx.log.error(
                "%s: unexpected error in kind %r applying a batch", ids, kind.name, exc_info=failure
            )
        for item in pending:
            after = self._after(kind, item)
            with self._charged(item):
                item.outcome = after._after_batch(kind, item, failure, ids)

    def _after_batch(
        self, kind: Kind[Any, Any], item: _Item, failure: Exception | None, ids: str
    ) -> _Outcome:
        """``item`` after its batch: verified, or what became of it if the batch failed."""
        if failure is None:
            verified = self._patiently(
                item.res, lambda: self._verify(item.res, kind, item.spec, item.changes)
            )
            assert verified is not None
            return verified
        if isinstance(failure, TimedOut):
            # The package manager was killed mid-transaction: each of the
            # others alone would very likely meet the same hang (and the
            # interrupted run it left), one timeout after another. Say what
            # the batch did get done, and leave the rest to the next run.
            return self._after_timeout(kind, item, failure, ids)
        if isinstance(failure, ModuleError):  # Busy too: the first to go waits for the lock
            alone = self._patiently(item.res, lambda: self._apply_alone(kind, item))
            assert alone is not None
            return alone
        error = f"{type(failure).__name__}: {failure} (in a batch with {ids})"
        return _Outcome(Status.FAILED, item.changes, error)

    def _after_timeout(
        self, kind: Kind[Any, Any], item: _Item, failure: TimedOut, ids: str
    ) -> _Outcome:
        """``item`` after its batch timed out: repaired if it converged before the kill."""
        try:
            state, remaining = self._observe(kind, item.spec)
        except Exception as exc:
            return self._failed(item.res, exc, item.changes)
        if not remaining:
            return _Outcome(Status.REPAIRED, item.changes, state=state)
        error = f"{failure} (in a batch with {ids})"
        return _Outcome(Status.FAILED, item.changes, error, state=state)

    def _apply_alone(self, kind: Kind[Any, Any], item: _Item) -> _Outcome:
        """After a failed batch: read ``item`` again, and apply it alone if it still differs.

        The batch may have changed some of its resources before it failed. The
        result reports the changes found before the batch, as for any repair.
        """
        try:
            state, changes = self._observe(kind, item.spec)
        except Exception as exc:
            return self._failed(item.res, exc, item.changes)
        if not changes:
            return _Outcome(Status.REPAIRED, item.changes, state=state)
        outcome = self._apply(item.res, kind, item.spec, state, changes)
        return dataclasses.replace(outcome, changes=item.changes)


def _limit(res: CatalogResource, kind: Kind[Any, Any]) -> float:
    """Seconds ``res`` gets: its own ``timeout``, or its kind's ``timeout_s``."""
    return res.timeout_s if res.timeout_s is not None else kind.timeout_s


def _verified(
    changes: tuple[Change, ...], remaining: tuple[Change, ...], state: Any = _UNREAD
) -> _Outcome:
    """Repaired if nothing differs any more after apply, else failed naming what still does."""
    if not remaining:
        return _Outcome(Status.REPAIRED, changes, state=state)
    detail = "; ".join(str(change) for change in remaining)
    return _Outcome(Status.FAILED, changes, f"still differs after apply: {detail}", state=state)


def _refresh_pending(own: _Outcome, notifiers: list[str]) -> _Outcome:
    """``own``, plus the refresh that ``notifiers`` call for but this run does not make."""
    if not notifiers or own.status not in (Status.IN_SYNC, Status.REPAIRED, Status.DRIFTED):
        return own
    pending = Change("refresh", "pending", f"refreshed ({_notified_by(notifiers)})")
    return dataclasses.replace(own, status=Status.DRIFTED, changes=(*own.changes, pending))


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


#: What a sensitive resource shows for every value: not even a hash (a short
#: secret's hash is soon guessed).
SENSITIVE = "(sensitive)"


def _not_known_yet(own: _Outcome, pending: list[str]) -> _Outcome:
    """An in-sync outcome of a noop run, which predicts what a run would do: in sync now
    says nothing of after the changes it requires, which were not made. (A pending
    refresh is a prediction of its own: see :func:`_refresh_pending`.)"""
    if not pending:
        return own
    detail = (
        f"in sync now, but it requires {', '.join(pending)}, which a run would change "
        "first: what it would do then is not known"
    )
    return dataclasses.replace(own, status=Status.UNKNOWN, error=detail)


def _sealed(res: CatalogResource, changes: tuple[Change, ...]) -> tuple[Change, ...]:
    """``changes`` as they may be shown: without values for a sensitive resource."""
    if not res.sensitive:
        return changes
    return tuple(Change(c.field, SENSITIVE, SENSITIVE) for c in changes)


def _result(res: CatalogResource, outcome: _Outcome, duration_s: float = 0.0) -> ResourceResult:
    """The one way out of the engine: a sensitive resource's values stay inside."""
    observed = outcome.observed
    if res.sensitive:
        observed = dict.fromkeys(observed, SENSITIVE)
    return ResourceResult(
        id=res.id,
        kind=res.kind,
        name=res.name,
        manifest=res.manifest,
        status=outcome.status,
        changes=_sealed(res, outcome.changes),
        error=outcome.error,
        duration_s=duration_s,
        controls=res.controls,
        reverted=outcome.reverted,
        observed=observed,
        transient=outcome.transient,
    )


def _unusable(res: CatalogResource, exc: CatalogError) -> ResourceResult:
    return _result(res, _Outcome(Status.FAILED, error=f"catalog unusable: {exc}"))


def _log(ctx: Context, result: ResourceResult) -> ResourceResult:
    """One line for every resource that is not in sync; returns ``result`` for chaining."""
    if result.status is not Status.IN_SYNC:
        changes = "; ".join(change.for_log() for change in result.changes)
        detail = " | ".join(part for part in (changes, result.error) if part)
        ctx.log.info("%s: %s%s", result.id, result.status, f" ({detail})" if detail else "")
    return result
