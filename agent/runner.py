"""One run: load the cached catalog (verified again), run the engine, spool the report.

Runs never overlap: a thread lock inside the daemon and a file lock across
processes (so `plumb-agent run --once` waits for the daemon's run to end).

Risky changes are applied with confirm-or-revert against ``server`` (see
``agent/engine.py``). A resource the engine reverted is held, neither applied
nor read, until a new catalog revision arrives, so that a change that cuts the
agent off is not tried again on every run; ``reverted.json`` in the state dir
keeps ``{"revision": N, "ids": [...]}`` across restarts.

Every run starts by checking the host's audit lock (agent/auditlock.py):
while it is on, the whole run is audit, whatever the catalog says (the
engine's ``audit``), and so are the runs of pushes and watchers, which all
come through here.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from agent import engine
from agent.auditlock import LockWatch
from agent.cache import CatalogCache
from agent.confirm import server_reachable
from agent.flapping import FlapGuard, FlapPolicy
from agent.intents import IntentJournal, RunMeta
from agent.report import RunReport, Trigger, run_summary
from agent.spool import Spool
from agent.state import StateDir
from modules.base import Context, Status
from modules.catalog import Catalog, CatalogResource

log = logging.getLogger("plumb.agent")


DEFAULT_CONFIRM_TIMEOUT_S = 5.0


class Runner:
    def __init__(
        self,
        state: StateDir,
        cache: CatalogCache,
        spool: Spool,
        root: Path,
        server: str | None = None,
        confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S,
        flap_policy: FlapPolicy | None = None,
    ) -> None:
        """``server`` (HOST:PORT) enables confirm-or-revert; None applies risky kinds unguarded."""
        self.state = state
        self.cache = cache
        self.node = cache.node
        self.root = root
        self.spool = spool
        self.flapping = FlapGuard(state, flap_policy or FlapPolicy())
        self.intents = IntentJournal(spool)
        #: The host's audit lock, checked at the start of every run.
        self.audit_lock = LockWatch(state.audit_lock)
        self._lock = threading.Lock()
        self._confirm: Callable[[], bool] | None = None
        if server is not None:
            address = server
            self._confirm = lambda: server_reachable(state, address, confirm_timeout_s)

    @property
    def reverted_path(self) -> Path:
        return self.state.path / "reverted.json"

    def held(self, revision: int) -> frozenset[str]:
        """Ids reverted earlier for ``revision``; a new revision clears the hold."""
        held = self.state.read_json(self.reverted_path) or {}
        if held.get("revision") != revision:
            return frozenset()
        return frozenset(str(i) for i in held.get("ids", []))

    def _holds(self, revision: int, specs: Mapping[str, str]) -> dict[str, str]:
        """Every resource held back in this run, and why: reverted earlier, or flapping."""
        reverted = f"held: reverted earlier at revision {revision}; waiting for a new catalog"
        return {**self.flapping.held(specs), **dict.fromkeys(self.held(revision), reverted)}

    def run(self, trigger: Trigger, noop: bool = False) -> RunReport | None:
        """Run the cached catalog and spool its report; None if there is no catalog yet."""
        with self._exclusive():
            locked = self.audit_lock.check() is not None
            catalog = self.cache.load()
            if catalog is None:
                log.info("no catalog yet: nothing to do")
                return None
            started = time.time()
            specs = {r.id: _spec_hash(r) for r in catalog.resources}
            ctx = Context(root=self.root, log=log)
            self._report_interrupted(catalog, ctx, specs)
            run_id = str(uuid.uuid4())
            meta = RunMeta(catalog.revision, str(trigger), started)
            if locked:
                log.info("audit lock on: this run changes nothing (every resource in audit)")
            results = engine.run(
                catalog.resources,
                ctx,
                noop=noop,
                confirm=self._confirm,
                hold=self._holds(catalog.revision, specs),
                intend=None if noop else self.intents.recorder(run_id, meta),
                audit=locked,
            )
            self._remember_reverted(catalog.revision, self.held(catalog.revision), results)
            drift = self._drift(results, specs)
            for flapping in self.flapping.record(results, drift, specs):
                log.warning("%s: %s", flapping, self.flapping.held(specs)[flapping])
            unnumbered = RunReport(
                id=run_id,
                node=self.node,
                revision=catalog.revision,
                noop=noop,
                trigger=trigger,
                started_at=started,
                finished_at=time.time(),
                results=tuple(results),
                drift=frozenset(drift),
            )
            report = self._spool(unnumbered)
            log.info("%s", run_summary(report))
            self._record(report)
            self._remember_converged(results, specs)
            return report

    def _spool(self, unnumbered: RunReport) -> RunReport:
        """Spool ``unnumbered`` with the next sequence number (ending its intents); numbered."""
        sequence = self.spool.add(
            unnumbered.id,
            lambda n: dataclasses.replace(unnumbered, sequence=n).to_wire().SerializeToString(),
        )
        return dataclasses.replace(unnumbered, sequence=sequence)

    def _report_interrupted(self, catalog: Catalog, ctx: Context, specs: dict[str, str]) -> None:
        """Spool a report for every run that journalled changes and was killed before its own."""
        converged = self.state.read_json(self.state.converged) or {}
        # converged.json is written after a run's report: it still says what
        # had converged before the interrupted run, as drift is judged by.
        interrupted = self.intents.recover(
            catalog, ctx, self.node, lambda rid: converged.get(rid) == specs.get(rid)
        )
        for report in interrupted:
            self._spool(report)

    def _remember_reverted(
        self, revision: int, hold: frozenset[str], results: list[engine.ResourceResult]
    ) -> None:
        ids = hold | {r.id for r in results if r.reverted}
        if ids:
            if ids != hold:
                body = {"revision": revision, "ids": sorted(ids)}
                self.state.keep(self.reverted_path, json.dumps(body).encode())
        else:
            self.reverted_path.unlink(missing_ok=True)

    def _drift(self, results: list[engine.ResourceResult], specs: dict[str, str]) -> set[str]:
        """Resources that differ from a spec they had already converged to: real drift.

        A resource that differs because its desired state is new (first run of
        a new catalog) is a change being rolled out, not drift.
        """
        converged = self.state.read_json(self.state.converged) or {}
        return {r.id for r in results if r.changes and converged.get(r.id) == specs[r.id]}

    def _remember_converged(
        self, results: list[engine.ResourceResult], specs: dict[str, str]
    ) -> None:
        previous = self.state.read_json(self.state.converged) or {}
        converged = {
            r.id: specs[r.id] for r in results if r.status in (Status.IN_SYNC, Status.REPAIRED)
        }
        # A dry run converges nothing, but must not forget what had converged.
        kept = {i: h for i, h in previous.items() if i in specs and specs[i] == h}
        self.state.keep(self.state.converged, json.dumps({**kept, **converged}).encode())

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock, open(self.state.lock, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def dry_run(self, catalog: Catalog) -> RunReport:
        """What a run of ``catalog`` would change, changing nothing (``plumb plan``).

        A candidate, not the cached catalog: nothing is spooled, recorded or
        remembered as converged, and a resource that depends on a change
        earlier in the same run is ``unknown`` (the engine's dry evaluation).
        It waits for a run in progress, so it reads a settled system.
        """
        with self._exclusive():
            started = time.time()
            results = engine.run(catalog.resources, Context(root=self.root, log=log), noop=True)
            specs = {r.id: _spec_hash(r) for r in catalog.resources}
            return RunReport(
                id=str(uuid.uuid4()),
                node=self.node,
                revision=catalog.revision,
                noop=True,
                trigger=Trigger.PLAN,
                started_at=started,
                finished_at=time.time(),
                results=tuple(results),
                drift=frozenset(self._drift(results, specs)),
            )

    def _record(self, report: RunReport) -> None:
        last = {
            "report_id": report.id,
            "sequence": report.sequence,
            "revision": report.revision,
            "noop": report.noop,
            "trigger": str(report.trigger),
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "summary": report.summary(),
        }
        self.state.keep(self.state.last_run, json.dumps(last, indent=2).encode())


def _spec_hash(resource: CatalogResource) -> str:
    body = json.dumps([resource.kind, resource.spec], sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()
