"""Load generator: many simulated agents in one process, speaking the real protocol.

Each simulated agent has its own key and certificate and its own mutual-TLS
connection (a channel with a local subchannel pool, so connections are never
shared), says hello, verifies every catalog it receives exactly as the real
agent does (``agent.tls.verify_catalog``), answers it with a report, and
counts a revision as done when the server acks that report. When its stream
breaks it spools one report (what a periodic run during an outage would
produce) and reconnects with the real agent's backoff: full jitter over an
exponentially growing window.

A dry run (``plumb plan``) is verified like any catalog, as the real agent
does, and answered at once with a noop PLAN report: one result per resource
of the candidate, DRIFTED with one Change per spec field that differs from
the simulator's current state, IN_SYNC otherwise. The current state is the
specs of the last catalog it applied (a simulated agent is always converged
to it); a resource it does not hold has every field "(absent)". What it does
not simulate: reading the system, file diffs, and UNKNOWN for an in-sync
resource that requires a pending change (the real engine's noop run says
so). A dry run never changes the applied revision or the current state.

Run by bench/_fleet.py; reads a JSON job on stdin, writes JSON-line events
on stdout:
    {"event": "connected", "t": [...]}              every agent saw its first welcome
    {"event": "round", "revision": R, "t_catalog": [...], "t_ack": [...]}
    {"event": "resynced", "round": K, "t": [...]}   every agent back in sync after a break
    {"event": "dry_runs", "t_received": [...], "t_answered": [...], "rejected": R,
     "applied": {revision: agents}, "catalogs": C}
        on the command {"cmd": "dry_runs"} (a further line on stdin): every dry run
        answered since the last such event, each agent's applied revision now, and
        how many catalogs (not dry runs) the agents received in all
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Run as a script from bench/: the repository's packages come first, before
# anything in bench/ whose name could shadow them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from agent.daemon import backoff_window
from agent.errors import CatalogRejected
from agent.tls import verify_catalog
from modules.catalog import Catalog, CatalogResource, resource_id
from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc

BACKOFF_CAP_S = 60.0  # the daemon's default

OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # one connection per simulated agent
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


class Fleet:
    """Bookkeeping shared by the simulated agents of this process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.connected: list[float] = []
        self.catalogs: dict[int, list[float]] = defaultdict(list)
        self.acks: dict[int, list[float]] = defaultdict(list)
        self.resynced: dict[int, list[float]] = defaultdict(list)
        self.dry_runs_received: list[float] = []
        self.dry_runs_answered: list[float] = []
        self.dry_runs_rejected = 0
        self.catalogs_received = 0

    def emit(self, event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)

    def first_welcome(self) -> None:
        self.connected.append(time.time())
        if len(self.connected) == self.size:
            self.emit({"event": "connected", "t": self.connected})

    def acked(self, revision: int, t_catalog: float) -> None:
        self.catalogs[revision].append(t_catalog)
        self.acks[revision].append(time.time())
        if len(self.acks[revision]) == self.size:
            self.emit(
                {
                    "event": "round",
                    "revision": revision,
                    "t_catalog": self.catalogs[revision],
                    "t_ack": self.acks[revision],
                }
            )

    def back_in_sync(self, breaks: int) -> None:
        self.resynced[breaks].append(time.time())
        if len(self.resynced[breaks]) == self.size:
            self.emit({"event": "resynced", "round": breaks, "t": self.resynced[breaks]})

    def dry_run_answered(self, t_received: float, rejected: bool) -> None:
        self.dry_runs_received.append(t_received)
        self.dry_runs_answered.append(time.time())
        self.dry_runs_rejected += rejected

    def emit_dry_runs(self, agents: Sequence[SimulatedAgent]) -> None:
        applied: dict[int, int] = defaultdict(int)
        for agent in agents:
            applied[agent.applied] += 1
        self.emit(
            {
                "event": "dry_runs",
                "t_received": self.dry_runs_received,
                "t_answered": self.dry_runs_answered,
                "rejected": self.dry_runs_rejected,
                "applied": applied,
                "catalogs": self.catalogs_received,
            }
        )
        self.dry_runs_received, self.dry_runs_answered = [], []
        self.dry_runs_rejected = 0


class SimulatedAgent:
    def __init__(
        self, name: str, key: bytes, cert: bytes, ca: bytes, server: str, fleet: Fleet
    ) -> None:
        self.name = name
        self.ca = ca
        self.server = server
        self.fleet = fleet
        self.credentials = grpc.ssl_channel_credentials(ca, key, cert)
        self.applied = 0
        self.spool: dict[str, pb.Report] = {}
        self.catalog_times: dict[str, tuple[int, float]] = {}  # report id -> (revision, t)
        self.breaks = 0
        self.welcomed = False
        self.in_sync_reported = -1
        self.resources: Sequence[CatalogResource] = ()  # of the last catalog
        # What a dry run compares against: id -> spec of the last catalog applied.
        self.current: dict[str, Mapping[str, Any]] = {}

    async def run(self) -> None:
        attempt = 0
        while True:
            answered, error = await self._session()
            if answered:  # a live session broke: a periodic run happens meanwhile
                self.breaks += 1
                self._spool_report(self.applied, self.resources)
            attempt = 0 if answered else attempt + 1
            window = backoff_window(attempt, error, BACKOFF_CAP_S)
            await asyncio.sleep(random.uniform(0, window))

    async def _session(self) -> tuple[bool, str]:
        """One connection: whether the server answered at all, and why it ended."""
        outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
        answered, error = False, ""
        async with grpc.aio.secure_channel(self.server, self.credentials, options=OPTIONS) as ch:
            call = pb_grpc.AgentStub(ch).Session()
            writer = asyncio.create_task(_write(call, outbox))
            outbox.put_nowait(
                pb.AgentMessage(
                    hello=pb.Hello(
                        node_name=self.name, applied_revision=self.applied, agent_version="sim"
                    )
                )
            )
            beats: asyncio.Task[None] | None = None
            try:
                async for message in call:
                    answered = True
                    if beats is None and message.WhichOneof("kind") == "welcome":
                        interval = message.welcome.heartbeat_interval_s
                        beats = asyncio.create_task(_heartbeats(outbox, interval))
                    self._handle(message, outbox)
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details() or ''}"
            finally:
                writer.cancel()
                if beats is not None:
                    beats.cancel()
        return answered, error

    def _handle(self, message: pb.ServerMessage, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
        kind = message.WhichOneof("kind")
        if kind == "welcome":
            if not self.welcomed:
                self.welcomed = True
                self.fleet.first_welcome()
            for report in self.spool.values():
                outbox.put_nowait(pb.AgentMessage(report=report))
            self._check_resynced(message.welcome.latest_revision)
        elif kind == "catalog":
            self._catalog(message.catalog, outbox)
        elif kind == "dry_run":
            self._dry_run(message.dry_run, outbox)
        elif kind == "ack":
            self.spool.pop(message.ack.report_id, None)
            timing = self.catalog_times.pop(message.ack.report_id, None)
            if timing is not None:
                self.fleet.acked(*timing)
            self._check_resynced(self.applied)

    def _catalog(self, signed: pb.SignedCatalog, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
        self.fleet.catalogs_received += 1
        try:
            catalog = verify_catalog(signed, self.ca, self.name)
        except CatalogRejected as exc:
            print(f"{self.name}: catalog rejected: {exc}", file=sys.stderr)
            ack = pb.CatalogAck(revision=signed.revision, accepted=False, error=str(exc))
            outbox.put_nowait(pb.AgentMessage(catalog_ack=ack))
            return
        # As the real agent does: the push counts it delivered on this.
        ack = pb.CatalogAck(revision=signed.revision, accepted=True)
        outbox.put_nowait(pb.AgentMessage(catalog_ack=ack))
        t_catalog = time.time()
        self.applied, self.resources = catalog.revision, catalog.resources
        self.current = {r.id: r.spec for r in catalog.resources}
        report = self._spool_report(catalog.revision, catalog.resources)
        self.catalog_times[report.id] = (catalog.revision, t_catalog)
        outbox.put_nowait(pb.AgentMessage(report=report))

    def _dry_run(self, request: pb.DryRun, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
        """Answer a plan's dry run; nothing of this agent's state changes."""
        t_received = time.time()
        try:
            catalog = verify_catalog(request.catalog, self.ca, self.name)
        except CatalogRejected as exc:
            error = f"the candidate catalog did not verify: {exc}"
            result = pb.DryRunResult(id=request.id, error=error)
        else:
            result = pb.DryRunResult(id=request.id, report=self._plan_report(catalog))
        outbox.put_nowait(pb.AgentMessage(dry_run_result=result))
        self.fleet.dry_run_answered(t_received, rejected=bool(result.error))

    def _plan_report(self, catalog: Catalog) -> pb.Report:
        now = time.time()
        results = []
        for r in catalog.resources:
            changes = _changes(self.current.get(r.id, {}), r.spec)
            results.append(
                pb.ResourceResult(
                    id=r.id,
                    kind=r.kind,
                    name=r.name,
                    manifest=r.manifest,
                    status=pb.DRIFTED if changes else pb.IN_SYNC,
                    changes=changes,
                )
            )
        return pb.Report(
            id=str(uuid.uuid4()),
            node_name=self.name,
            revision=catalog.revision,
            noop=True,
            trigger=pb.PLAN,
            started_at=now,
            finished_at=now,
            results=results,
        )

    def _spool_report(self, revision: int, resources: Sequence[CatalogResource] = ()) -> pb.Report:
        """A report of ``resources`` (the catalog's: the server keeps only those), all in sync."""
        now = time.time()
        report = pb.Report(
            id=str(uuid.uuid4()),
            node_name=self.name,
            revision=revision,
            trigger=pb.PUSH,
            started_at=now,
            finished_at=now,
            results=[
                pb.ResourceResult(
                    id=resource_id(r.kind, r.name),
                    kind=r.kind,
                    name=r.name,
                    manifest=r.manifest,
                    status=pb.IN_SYNC,
                )
                for r in resources
            ],
        )
        self.spool[report.id] = report
        return report

    def _check_resynced(self, latest: int) -> None:
        if (
            self.breaks > self.in_sync_reported
            and self.breaks > 0
            and not self.spool
            and latest == self.applied
        ):
            self.in_sync_reported = self.breaks
            self.fleet.back_in_sync(self.breaks)


def _changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[pb.Change]:
    """One Change per spec field whose desired value is not the current one."""
    return [
        pb.Change(field=field, observed=_shown(current, field), desired=_shown(desired, field))
        for field in sorted({*current, *desired})
        if current.get(field) != desired.get(field)
    ]


def _shown(spec: Mapping[str, Any], field: str) -> str:
    return json.dumps(spec[field]) if field in spec else "(absent)"


async def _heartbeats(outbox: asyncio.Queue[pb.AgentMessage], interval_s: float) -> None:
    """What keeps a real agent's session alive on the server: a heartbeat every interval."""
    if interval_s <= 0:
        return
    # Spread over the interval, as a fleet that did not connect in one instant would be.
    await asyncio.sleep(random.uniform(0, interval_s))
    while True:
        outbox.put_nowait(pb.AgentMessage(heartbeat=pb.Heartbeat()))
        await asyncio.sleep(interval_s)


async def _write(call: Any, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
    try:
        while True:
            await call.write(await outbox.get())
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the stream ended; the reader sees why


def _read_commands(
    loop: asyncio.AbstractEventLoop, fleet: Fleet, agents: Sequence[SimulatedAgent]
) -> None:
    """Further lines on stdin are commands, run on the loop (the agents' bookkeeping is its)."""

    def read() -> None:
        for line in sys.stdin:
            command = json.loads(line)["cmd"]
            if command == "dry_runs":
                loop.call_soon_threadsafe(fleet.emit_dry_runs, agents)
            else:
                print(f"simulator: unknown command {command!r}", file=sys.stderr)

    threading.Thread(target=read, daemon=True, name="commands").start()


async def main() -> None:
    job = json.loads(sys.stdin.readline())
    ca = job["ca"].encode()
    fleet = Fleet(len(job["agents"]))
    agents = [
        SimulatedAgent(a["name"], a["key"].encode(), a["cert"].encode(), ca, job["server"], fleet)
        for a in job["agents"]
    ]
    _read_commands(asyncio.get_running_loop(), fleet, agents)
    tasks = []
    for agent in agents:
        tasks.append(asyncio.create_task(agent.run()))
        # Agents start over a short ramp, as a fleet's daemons would.
        await asyncio.sleep(job.get("ramp_s", 0) / len(agents))
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
