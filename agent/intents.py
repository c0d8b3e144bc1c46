"""The intent journal: a run killed half-way still reports what it changed.

A report is spooled when a run ends. A run killed before that (kill -9, the
OOM killer, a power cut) would leave no report, so the resources it changed
would show up later as ``in_sync`` and the server would never learn they had
been changed at all. So just before the engine applies a change, the runner
journals it in the spool (fsynced): the run, the resource, the changes. The
run's report, spooled in the same transaction that ends its intents, says
what became of them.

Intents still in the journal at the next run belong to a run that never
ended. The next run reports that run for it, before its own: each
journalled resource is read again, and is ``repaired`` by the interrupted
run if it is now as desired (the change went through), else ``failed``
("interrupted ...": the next run applies it again). The report carries the
interrupted run's id, trigger, revision and start, so its changes and drift
are on the server where they belong.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from agent import engine
from agent.errors import SpoolError
from agent.report import RunReport, Trigger
from agent.spool import Spool
from modules import registry
from modules.base import Change, Context, Status
from modules.catalog import Catalog, CatalogResource

log = logging.getLogger("plumb.agent")

INTERRUPTED = "interrupted: the agent stopped during this change (killed, or the host went down)"


@dataclasses.dataclass(frozen=True)
class RunMeta:
    """What an interrupted run's report needs that its intents do not say."""

    revision: int
    trigger: str
    started_at: float


class IntentJournal:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._warned = False  # that changes go ahead unjournalled
        self._unread = False  # that the journal cannot be read

    def recorder(self, run: str, meta: RunMeta) -> engine.Intend:
        """What the engine calls before each change of run ``run``."""
        meta_json = json.dumps(dataclasses.asdict(meta))

        def intend(res: CatalogResource, changes: Sequence[Change]) -> None:
            body = json.dumps([dataclasses.asdict(change) for change in changes])
            try:
                self.spool.intend(run, res.id, meta_json, body)
            except SpoolError as exc:
                # The change is what matters: it goes ahead, unjournalled.
                if not self._warned:
                    log.warning("cannot journal changes before applying them: %s", exc)
                    self._warned = True

        return intend

    def recover(
        self,
        catalog: Catalog,
        ctx: Context,
        node: str,
        drifting: Callable[[str], bool],
        kinds: engine.KindLookup | None = None,
    ) -> list[RunReport]:
        """Report every run that journalled changes and never ended; oldest first.

        ``drifting(resource_id)`` says whether a change to it was drift (it had
        converged to its current spec before).
        """
        by_run: dict[str, list[tuple[str, RunMeta, tuple[Change, ...]]]] = defaultdict(list)
        try:
            journalled = self.spool.intents()
        except SpoolError as exc:  # a spool that cannot be read now: they keep till it can
            if not self._unread:
                log.warning("cannot read the intent journal (%s): interrupted runs wait", exc)
            self._unread = True
            return []
        self._unread = False
        for run, resource, meta_json, changes in journalled:
            by_run[run].append((resource, RunMeta(**json.loads(meta_json)), _changes(changes)))
        reports = []
        for run, items in by_run.items():
            run_meta = items[0][1]
            results = [self._result(catalog, run_meta, ctx, rid, ch, kinds) for rid, _, ch in items]
            report = RunReport(
                id=run,
                node=node,
                revision=run_meta.revision,
                noop=False,
                trigger=Trigger(run_meta.trigger),
                started_at=run_meta.started_at,
                finished_at=time.time(),
                results=tuple(results),
                drift=frozenset(r.id for r in results if r.changes and drifting(r.id)),
            )
            log.warning(
                "run %s (%s, revision %d) was interrupted: reporting its %d change(s) for it",
                run,
                run_meta.trigger,
                run_meta.revision,
                len(results),
            )
            reports.append(report)
        return reports

    def _result(
        self,
        catalog: Catalog,
        meta: RunMeta,
        ctx: Context,
        resource_id: str,
        changes: tuple[Change, ...],
        kinds: engine.KindLookup | None,
    ) -> engine.ResourceResult:
        res = _resource(catalog, resource_id) if catalog.revision == meta.revision else None
        kind, _, name = resource_id.partition("/")
        if res is None:
            why = f"{INTERRUPTED}; the catalog has changed since, so what it left is unknown"
            return engine.ResourceResult(resource_id, kind, name, "", Status.UNKNOWN, changes, why)
        # Read now, on its own: is it as the interrupted change wanted it?
        lone = dataclasses.replace(res, require=(), subscribe=())
        [now] = engine.run([lone], ctx, noop=True, kinds=kinds or registry.get)
        note = {"interrupted": "the agent stopped before this run ended; read by the next run"}
        if now.status is Status.IN_SYNC:
            status, error = Status.REPAIRED, ""
        else:
            status = Status.FAILED
            error = f"{INTERRUPTED}; the next run applies it again"
            if now.error:
                error += f" ({now.error})"
        return dataclasses.replace(
            now, status=status, changes=changes, error=error, observed=note, duration_s=0.0
        )


def _resource(catalog: Catalog, resource_id: str) -> CatalogResource | None:
    return next((r for r in catalog.resources if r.id == resource_id), None)


def _changes(body: str) -> tuple[Change, ...]:
    items: list[Mapping[str, str]] = json.loads(body)
    return tuple(Change(c["field"], c["observed"], c["desired"]) for c in items)
