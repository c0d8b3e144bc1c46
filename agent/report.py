"""A run's report as the agent keeps it, until it goes on the wire.

The engine's results stay engine objects (:class:`agent.engine.ResourceResult`,
statuses of :class:`modules.base.Status`) inside the agent: the watchers, the
exit code of ``run --once`` and ``plumb-agent status`` read them as such.
:meth:`RunReport.to_wire` makes the protobuf message once, when the report is
spooled for the server.
"""

from __future__ import annotations

import dataclasses
import enum

from agent.engine import ResourceResult, summarize
from modules.base import Status
from protos import plumb_pb2 as pb


class Trigger(enum.StrEnum):
    """Why a run happened."""

    PUSH = "push"  # a new catalog arrived
    SCHEDULE = "schedule"  # the periodic run
    MANUAL = "manual"  # plumb-agent run --once
    START = "start"  # the daemon started
    WATCH = "watch"  # a watcher saw something managed change


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

    def statuses(self) -> set[Status]:
        return {r.status for r in self.results}

    def summary(self) -> dict[str, int]:
        return summarize(self.results)

    def to_wire(self) -> pb.Report:
        return pb.Report(
            id=self.id,
            node_name=self.node,
            revision=self.revision,
            noop=self.noop,
            trigger=self.trigger.name,  # enum fields take value names
            started_at=self.started_at,
            finished_at=self.finished_at,
            results=[_result(r, r.id in self.drift) for r in self.results],
        )


def _result(r: ResourceResult, drift: bool) -> pb.ResourceResult:
    return pb.ResourceResult(
        drift=drift,
        id=r.id,
        kind=r.kind,
        name=r.name,
        manifest=r.manifest,
        status=r.status.name,
        changes=[
            pb.Change(field=c.field, observed=c.observed, desired=c.desired) for c in r.changes
        ],
        error=r.error,
        duration_s=r.duration_s,
        controls=list(r.controls),
        observed=dict(r.observed),
    )
