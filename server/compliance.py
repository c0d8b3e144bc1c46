"""Compliance: of everything the latest revision expects on each node, how much is as desired.

The denominator is what is *expected*, never only what happened to be
evaluated: every resource the catalogs of the latest revision hold, on every
node they select. Each expected resource has exactly one state:

- its status in the node's newest run report, when that report ran the
  latest revision: ``in_sync`` and ``repaired`` are compliant; ``drifted``,
  ``failed``, ``skipped`` (a requirement failed) and ``unknown`` (it could not
  be evaluated) are not;
- ``pending``: the node has not reported at the latest revision yet (it is
  disconnected, or its run is under way); what it reported at an older
  revision says nothing about this one;
- ``no_catalog``: the node's catalog could not be compiled (two resources
  would manage one object on it), so nothing of it is enforced;
- ``no_report``: the node's agent runs by itself every T seconds and sent no
  run report for ``no_report_after_runs`` times T: whatever it reported last,
  nothing says it still holds (an agent stopped, wedged or cut off);
- ``unknown`` too when the node's report at the revision does not mention the
  resource at all.

A result that is not compliant (``drifted``, ``failed``, ``skipped``,
``unknown``) and that an active waiver covers (its control or its resource,
on a node the waiver's selector picks) is ``waived`` instead: shown as such,
and counted in the score *with* waivers only. An expired or revoked waiver
covers nothing, from that moment. Operational states (``pending``,
``no_report``, ``no_catalog``) are never waived: a waiver accepts a result,
not the lack of one.

So "1/1 100 %" can never hide a resource left out on another node: each scope
(node, manifest, control tag, kind, and the fleet) carries the count of every
state, and its percentage is compliant / expected.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from modules.base import Status
from server.compiler import DesiredState, resources_of
from server.store import NodeRow, StatusRow
from server.targeting import Selector

COMPLIANT = (Status.IN_SYNC.value, Status.REPAIRED.value)
PENDING = "pending"
NO_CATALOG = "no_catalog"
NO_REPORT = "no_report"
WAIVED = "waived"
#: Every state an expected resource can be in, in the order reports list them.
STATES = (*(s.value for s in Status), WAIVED, PENDING, NO_REPORT, NO_CATALOG)
#: The results a waiver can cover: evaluated, and not as desired.
WAIVABLE = frozenset(
    s.value for s in (Status.DRIFTED, Status.FAILED, Status.SKIPPED, Status.UNKNOWN)
)
#: A node is "no report" after this many of its run intervals without a report.
NO_REPORT_AFTER_RUNS = 3
#: The order scopes are listed in.
SCOPES = ("node", "manifest", "control", "kind")


@dataclasses.dataclass
class Tally:
    """The states of the expected resources of one scope (a node, a manifest, ...)."""

    scope: str
    name: str
    counts: Counter[str] = dataclasses.field(default_factory=Counter)

    @property
    def compliant(self) -> int:
        return sum(self.counts[state] for state in COMPLIANT)

    @property
    def expected(self) -> int:
        return sum(self.counts.values())

    @property
    def percent(self) -> float | None:
        """100 * compliant / expected; None when nothing is expected."""
        return 100.0 * self.compliant / self.expected if self.expected else None

    @property
    def percent_with_waivers(self) -> float | None:
        """100 * (compliant + waived) / expected; None when nothing is expected."""
        if not self.expected:
            return None
        return 100.0 * (self.compliant + self.counts[WAIVED]) / self.expected

    def ordered_counts(self) -> dict[str, int]:
        """The count of each state that occurs, in :data:`STATES` order."""
        return {state: self.counts[state] for state in STATES if self.counts[state]}


@dataclasses.dataclass(frozen=True)
class Compliance:
    revision: int
    rows: list[Tally]  # by scope (SCOPES order), then name
    fleet: Tally
    by_node: dict[str, Tally]  # every enrolled node, also those expected nothing
    nodes: list[NodeRow]  # the nodes it was computed for, as the store had them
    problems: Mapping[str, list[str]]  # why a node has no catalog at the revision


@dataclasses.dataclass(frozen=True)
class Waiver:
    """An accepted exception: a control's or one resource's results on some nodes."""

    id: int
    control: str | None
    resource_id: str | None
    target: Selector | None  # None: every node
    expires_at: float
    revoked_at: float | None = None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and now < self.expires_at

    def covers(self, node: NodeRow, resource_id: str, controls: Sequence[str]) -> bool:
        if self.target is not None and not self.target.matches(node.subject):
            return False
        if self.resource_id is not None:
            return resource_id == self.resource_id
        return self.control in controls


@dataclasses.dataclass(frozen=True)
class _Expected:
    id: str
    manifest: str
    kind: str
    controls: tuple[str, ...]


def compute(
    revision: int,
    desired: DesiredState,
    nodes: Iterable[NodeRow],
    problems: Mapping[str, list[str]],
    statuses: Iterable[StatusRow],
    now: float | None = None,
    no_report_after_runs: float = NO_REPORT_AFTER_RUNS,
    waivers: Sequence[Waiver] = (),
) -> Compliance:
    """Compliance at ``revision`` (whose desired state is ``desired``) of ``nodes``.

    ``problems`` names the nodes whose catalog at ``revision`` could not be
    compiled; ``statuses`` is every node's current status per resource.
    ``now`` (server clock) decides which nodes are silent (see :func:`silent`)
    and which ``waivers`` are active; None: no node is silent, no waiver active.
    """
    active = [w for w in waivers if now is not None and w.active(now)]
    current: dict[str, dict[str, str]] = {}
    for row in statuses:
        current.setdefault(row.node, {})[row.resource_id] = row.status.value
    tallies: dict[tuple[str, str], Tally] = {}
    fleet = Tally("fleet", "fleet")
    by_node: dict[str, Tally] = {}
    selections: dict[tuple[tuple[int, ...], tuple[int, ...]], list[_Expected]] = {}
    nodes = list(nodes)
    for node in nodes:
        key = desired.selection(node.subject)
        if key not in selections:
            selections[key] = _expected(desired, key)
        by_node[node.name] = tallies.setdefault(("node", node.name), Tally("node", node.name))
        for res in selections[key]:
            quiet = now is not None and silent(node, now, no_report_after_runs)
            state = _state(node, res, revision, problems, current.get(node.name, {}), quiet)
            if state in WAIVABLE and any(w.covers(node, res.id, res.controls) for w in active):
                state = WAIVED
            fleet.counts[state] += 1
            for scope, name in _scopes(node.name, res):
                tallies.setdefault((scope, name), Tally(scope, name)).counts[state] += 1
    rows = sorted(tallies.values(), key=lambda t: (SCOPES.index(t.scope), t.name))
    return Compliance(revision, rows, fleet, by_node, nodes, problems)


def _expected(
    state: DesiredState, selection: tuple[tuple[int, ...], tuple[int, ...]]
) -> list[_Expected]:
    """What a catalog of this selection holds, in catalog order: the compiler's own answer.

    A selection that does not compile (the node's catalog problem) still
    expects every resource its manifests declare: each counts as ``no_catalog``.
    """
    resources, problems = resources_of(state, selection)
    if problems:
        return [
            _Expected(r.id, state.manifests[i].name, r.kind, r.controls)
            for i in selection[0]
            for r in state.manifests[i].resources
        ]
    return [_Expected(r.id, r.manifest, r.kind, r.controls) for r in resources]


def _state(
    node: NodeRow,
    res: _Expected,
    revision: int,
    problems: Mapping[str, object],
    reported: Mapping[str, str],
    quiet: bool = False,
) -> str:
    if node.name in problems:
        return NO_CATALOG
    if quiet:
        return NO_REPORT
    if node.status_revision != revision:
        return PENDING
    return reported.get(res.id, Status.UNKNOWN.value)


def silent(node: NodeRow, now: float, after_runs: float = NO_REPORT_AFTER_RUNS) -> bool:
    """Whether ``node`` sent no run report for ``after_runs`` of its run intervals.

    Only for an agent that said how often it runs by itself: one that does
    not (one-shot runs) or did not say (an older agent) is never silent. A
    node that never reported is counted from when it enrolled.
    """
    interval = node.run_interval_s
    if not interval:
        return False
    last = node.last_report_at or node.enrolled_at
    return now - last > after_runs * interval


def node_state(
    node: NodeRow,
    connected: bool,
    latest: int,
    now: float,
    after_runs: float = NO_REPORT_AFTER_RUNS,
) -> str:
    """What ``plumb nodes`` says of a node, the first that holds: removed, revoked,
    no_report (see :func:`silent`), pending (it has not reported revision ``latest``),
    connected, disconnected."""
    if node.decommissioned_at:
        return "removed"
    if node.revoked_at:
        return "revoked"
    if silent(node, now, after_runs):
        return NO_REPORT
    if latest and node.status_revision != latest:
        return PENDING
    return "connected" if connected else "disconnected"


def _scopes(node: str, res: _Expected) -> list[tuple[str, str]]:
    return [
        ("node", node),
        ("manifest", res.manifest),
        ("kind", res.kind),
        *(("control", control) for control in res.controls),
    ]
