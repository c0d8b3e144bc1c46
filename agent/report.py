"""A run's report as the agent keeps it, until it goes on the wire.

The engine's results stay engine objects (:class:`agent.engine.ResourceResult`,
statuses of :class:`modules.base.Status`) inside the agent: the watchers, the
exit code of ``run --once`` and ``plumb-agent status`` read them as such.
:meth:`RunReport.to_wire` makes the protobuf message once, when the report is
spooled for the server.

A report is bounded by construction, so that no run can produce one the
server will not take (which would then stand in front of every later
report): each change's values and each observed value keep at most
``MAX_VALUE_CHARS`` characters, an error ``MAX_ERROR_CHARS``, each cut
ending in a marker that says how much was cut. If the whole report is still
over ``MAX_REPORT_BYTES`` (a catalog of many thousand resources), the values
are cut shorter, then the observed maps and the change values are dropped,
keeping every resource's status. ``truncated`` says that something was cut.
The server takes messages of up to 8 MiB (server/app.py); a catalog is at
most 6 MiB (refused at push otherwise), so a report of its statuses fits.
"""

from __future__ import annotations

import dataclasses
import enum

from agent.engine import ResourceResult, summarize
from modules.base import Status
from protos import plumb_pb2 as pb
from protos.limits import MAX_REPORT_BYTES


class Trigger(enum.StrEnum):
    """Why a run happened."""

    PUSH = "push"  # a new catalog arrived
    SCHEDULE = "schedule"  # the periodic run
    MANUAL = "manual"  # plumb-agent run --once
    START = "start"  # the daemon started
    WATCH = "watch"  # a watcher saw something managed change
    PLAN = "plan"  # a dry run of a candidate catalog (plumb plan): never spooled


@dataclasses.dataclass(frozen=True)
class RunReport:
    id: str  # made here, so the server ingests a resent report once
    node: str
    revision: int
    noop: bool
    trigger: Trigger
    started_at: float  # Unix seconds
    finished_at: float
    results: tuple[ResourceResult, ...]
    #: Resources that differed from a spec they had already converged to: real drift.
    drift: frozenset[str] = frozenset()
    #: Given by the spool as the report is spooled (agent/spool.py); 0 before that.
    sequence: int = 0

    def statuses(self) -> set[Status]:
        return {r.status for r in self.results}

    def summary(self) -> dict[str, int]:
        return summarize(self.results)

    def to_wire(self) -> pb.Report:
        """The wire report, within MAX_REPORT_BYTES (see the module docstring)."""
        for limits in _LIMITS:
            wire = self._wire(limits)
            if wire.ByteSize() <= MAX_REPORT_BYTES:
                return wire
        return wire  # statuses only: what a catalog the server accepted can always carry

    def _wire(self, limits: _Limits) -> pb.Report:
        cut = _Cut(limits)
        results = [cut.result(r, r.id in self.drift) for r in self.results]
        return pb.Report(
            id=self.id,
            node_name=self.node,
            revision=self.revision,
            noop=self.noop,
            trigger=self.trigger.name,  # enum fields take value names
            started_at=self.started_at,
            finished_at=self.finished_at,
            results=results,
            sequence=self.sequence,
            truncated=cut.happened,
        )


def run_summary(report: RunReport) -> str:
    """One line for every run: what it ran, the count per status, how long it took."""
    counts = ", ".join(f"{status} {n}" for status, n in report.summary().items() if n)
    noop = " noop" if report.noop else ""
    return (
        f"{report.trigger}{noop} run of revision {report.revision} (report {report.sequence}): "
        f"{counts or 'no resources'} in {report.finished_at - report.started_at:.2f}s"
    )


MAX_VALUE_CHARS = 4096
MAX_ERROR_CHARS = 16384
MAX_DIFF_CHARS = 32768


@dataclasses.dataclass(frozen=True)
class _Limits:
    value: int  # characters of a change value or an observed value; 0: dropped
    error: int
    diff: int  # characters of a change's text diff; a longer one is dropped whole


# Tried in turn until the report fits; the last keeps every status and little else.
_LIMITS = (
    _Limits(MAX_VALUE_CHARS, MAX_ERROR_CHARS, MAX_DIFF_CHARS),
    _Limits(256, 2048, 0),
    _Limits(0, 256, 0),
)


class _Cut:
    """Builds wire results within some limits, remembering whether anything was cut."""

    def __init__(self, limits: _Limits) -> None:
        self.limits = limits
        self.happened = False

    def whole(self, value: str, limit: int) -> str:
        """``value`` if it fits, else nothing: half a diff would say what is not so."""
        if len(value) <= limit:
            return value
        self.happened = True
        return ""

    def text(self, value: str, limit: int) -> str:
        if len(value) <= limit:
            return value
        self.happened = True
        return value[:limit] + f"… ({len(value) - limit} more characters cut)"

    def result(self, r: ResourceResult, drift: bool) -> pb.ResourceResult:
        value = self.limits.value
        if value == 0 and (r.observed or r.changes):
            self.happened = True
        changes = [
            pb.Change(
                field=c.field,
                observed=self.text(c.observed, value) if value else "",
                desired=self.text(c.desired, value) if value else "",
                diff=self.whole(c.diff or "", self.limits.diff),
            )
            for c in r.changes
        ]
        observed = {k: self.text(v, value) for k, v in r.observed.items()} if value else {}
        return pb.ResourceResult(
            drift=drift,
            id=r.id,
            kind=r.kind,
            name=r.name,
            manifest=r.manifest,
            status=r.status.name,
            changes=changes,
            error=self.text(r.error, self.limits.error),
            duration_s=r.duration_s,
            controls=list(r.controls),
            observed=observed,
        )
