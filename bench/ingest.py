"""Ingest: sustained run reports per second into the SQLite store (synchronous=FULL).

A fresh store in a temporary directory, NODES nodes enrolled through the
Store, and realistic reports: RESOURCES results each (files, packages,
services, firewall rules, routes; mostly in_sync, some repaired or drifted
with their changes, a few failed with an error, skipped or unknown; compliance
control tags). Every body is the protobuf encoding of a real ``pb.Report``
(the bytes ``server.wire.report_record`` stores; a sample is checked by
converting the wire report again).

Measured, one after another on the same database:

* ``single``: one transaction (one fsync) per report, the way the server
  stored reports before group commit; for comparison only.
* ``store``: ``Store.ingest_reports`` in batches of BATCH, for STORE_S seconds:
  reports/s over the time spent inside the store, and each commit's latency.
* ``end_to_end``: SUBMITTERS coroutines each submitting one report at a time
  through the server's ``Ingestor`` (group commit in a worker thread), for
  E2E_S seconds: reports/s, the batch sizes it formed, and the latency of
  ``submit`` (from submission until durably committed).
* ``wire``: what converting a received ``pb.Report`` into a record costs on
  the server (``server.wire.report_record``), the step before ``submit``,
  and (``check_ms_per_report``) checking it against the node's catalog
  first (``server.given.believed``, an honest report).

Each phase also reports ``cpu_steal_percent``: on a shared virtual machine,
CPU time taken by other guests slows every phase (seen here: several-fold)
without any change in Plumb.

The target (> TARGET_RATE reports/s) is judged on the lower of ``store``
and ``end_to_end``. ``wire`` is not part of it, but bounds what a server can
take in over gRPC today: that conversion runs under the same GIL.

What a batch costs depends on the mix: every drift event is a row in a table
with four indexes, and each node's newest report in a batch replaces that
node's RESOURCES status rows (once per batch, however many of its reports the
batch holds), so ``status_mix_per_report`` and NODES are part of the result.

Finally the database must hold exactly the reports that were reported as
stored, as many drift events as those reports carry, and one status row per
node and resource; otherwise the benchmark fails rather than print numbers.
"""

from __future__ import annotations

import asyncio
import random
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from bench._common import BenchmarkFailed, emit, main_guard, percentiles, progress
from modules.base import Status
from protos import plumb_pb2 as pb
from server.given import Given, believed
from server.ingest import MAX_BATCH, Ingestor
from server.store import DRIFT, ReportRecord, Store, drift_events, resource_status
from server.wire import STATUS_TO_PB, report_record

NODES = 200
RESOURCES = 50
VARIANTS = 6  # distinct reports (status mixes) per node
BATCH = MAX_BATCH  # as the server batches
SINGLE_S = 3.0
STORE_S = 20.0
E2E_S = 15.0
SUBMITTERS = 2 * MAX_BATCH  # a full batch queues while the previous one commits
WIRE_SAMPLES = 300
TARGET_RATE = 5000
SEED = 20240611

# Per resource and report: mostly converged, some repaired or drifted, a few failures.
STATUS_WEIGHTS = {
    Status.IN_SYNC: 93,
    Status.REPAIRED: 3,
    Status.DRIFTED: 1,
    Status.FAILED: 1,
    Status.SKIPPED: 1,
    Status.UNKNOWN: 1,
}
DRIFT_SHARE = 0.5  # of repaired/drifted results: an out-of-band change (else a new spec)
KINDS = (("file", 20), ("package", 15), ("service", 8), ("firewall", 4), ("route", 3))
CONTROLS: tuple[list[str], ...] = (
    [],
    ["CIS-1.1.1"],
    ["CIS-5.2.4", "ISO27001-A.9.4.2"],
    ["CIS-3.5.1.1", "SOC2-CC6.6", "ISO27001-A.13.1.1"],
    ["SOC2-CC7.1"],
)
CHANGES = {
    "file": [("content", "sha256:1f2e3d4c5b6a… (812 bytes)", "sha256:9a8b7c6d5e4f… (830 bytes)")],
    "package": [("version", "2.4.57-2", "2.4.62-1~deb12u1")],
    "service": [("running", "false", "true"), ("enabled", "false", "true")],
    "firewall": [("rule", "absent", "tcp dport 443 accept")],
    "route": [("gateway", "10.0.0.254", "10.0.0.1"), ("metric", "200", "100")],
}
ERRORS = {
    "file": "could not write /etc/app/app.conf: [Errno 28] No space left on device",
    "package": "apt-get install nginx=1.22.1-9: E: Could not get lock /var/lib/dpkg/lock-frontend",
    "service": "Job for nginx.service failed because the control process exited with error code.",
    "firewall": "nft -j -f -: Error: Could not process rule: No such file or directory",
    "route": "RTNETLINK answers: Network is unreachable (gateway 10.9.0.1)",
}

# Placeholders in a template body; each appears exactly once (checked).
ID, STARTED, FINISHED = "00000000-0000-4000-8000-000000000000", 111111111.125, 222222222.375


class Template:
    """One node's report, encoded once; each report fills in its id and times.

    The body is protobuf: the id is a fixed-length string and the times are
    fixed 8-byte doubles, so splicing them in gives exactly what encoding the
    whole message again would.
    """

    def __init__(self, record: ReportRecord) -> None:
        self.record = record
        self.drift_events = sum(1 for r in record.results if r.drift and r.status in DRIFT)
        # The body around the placeholders, each of which must occur exactly once.
        parts, rest = [], record.body
        for placeholder in (ID.encode(), _number(STARTED), _number(FINISHED)):
            if rest.count(placeholder) != 1:
                raise BenchmarkFailed(f"placeholder {placeholder} is not unique in a body")
            head, rest = rest.split(placeholder)
            parts.append(head)
        self.parts = (*parts, rest)

    def make(self, report_id: str, started: float, finished: float) -> ReportRecord:
        a, b, c, d = self.parts
        r = self.record
        return ReportRecord(
            report_id,
            r.node,
            r.revision,
            r.noop,
            r.trigger,
            started,
            finished,
            r.results,
            b"".join((a, report_id.encode(), b, _number(started), c, _number(finished), d)),
        )


def _number(value: float) -> bytes:
    return struct.pack("<d", value)  # how protobuf encodes a double field


def _wire_report(node: str, rng: random.Random, noop: bool) -> pb.Report:
    report = pb.Report(
        id=ID,
        node_name=node,
        revision=42,
        noop=noop,
        trigger=rng.choice([pb.SCHEDULE] * 6 + [pb.WATCH, pb.PUSH]),
        started_at=STARTED,
        finished_at=FINISHED,
    )
    statuses, weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    n = 0
    for kind, count in KINDS:
        for i in range(count):
            n += 1
            status = rng.choices(statuses, weights)[0]
            if noop and status is Status.REPAIRED:
                status = Status.DRIFTED  # a noop run changes nothing
            name = f"{kind}-{i:02d}"
            result = report.results.add(
                id=f"{kind}/{name}",
                kind=kind,
                name=name,
                manifest=("base", "web", "hardening")[n % 3],
                status=STATUS_TO_PB[status],
                duration_s=round(rng.uniform(0.0002, 0.05), 6),
                controls=CONTROLS[n % len(CONTROLS)],
            )
            if status in DRIFT:
                for field, observed, desired in CHANGES[kind]:
                    result.changes.add(field=field, observed=observed, desired=desired)
                result.drift = rng.random() < DRIFT_SHARE
            elif status is Status.FAILED:
                result.error = ERRORS[kind]
            elif status is Status.SKIPPED:
                result.error = f"requires {kind}/{kind}-00, which failed"
            elif status is Status.UNKNOWN:
                result.error = "depends on an unapplied change to file/file-00"
    return report


def make_templates(nodes: Sequence[str], rng: random.Random) -> dict[str, list[Template]]:
    return {
        node: [
            Template(report_record(_wire_report(node, rng, noop=variant == 0)))
            for variant in range(VARIANTS)
        ]
        for node in nodes
    }


class Reports:
    """An endless, reproducible stream of reports from every node, in time order."""

    def __init__(self, templates: dict[str, list[Template]], rng: random.Random) -> None:
        self.templates = templates
        self.nodes = list(templates)
        self.rng = rng
        self.clock = 1_750_000_000.0
        self.made = 0
        self.drift_events = 0

    def next(self) -> ReportRecord:
        self.made += 1
        self.clock += 0.01
        node = self.rng.choice(self.nodes)
        template = self.rng.choice(self.templates[node])
        self.drift_events += template.drift_events
        # Now and then a report arrives late from an agent's spool: older than
        # what its node's status already reflects, so it is stored but not folded.
        late = 3600.0 if self.rng.random() < 0.02 else 0.0
        finished = round(self.clock - late, 3)
        # Shaped like the agent's uuid4 ids, but from the seeded generator (and cheaper).
        h = f"{self.rng.getrandbits(128):032x}"
        report_id = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"
        return template.make(report_id, finished - self.rng.uniform(0.5, 20.0), finished)

    def batch(self, n: int) -> list[ReportRecord]:
        return [self.next() for _ in range(n)]


def check_wire_identity(reports: Reports, n: int) -> None:
    """The bodies must be exactly what the server makes of the same wire report."""
    for _ in range(n):
        record = reports.next()
        again = report_record(pb.Report.FromString(record.body))
        if again != record:
            raise BenchmarkFailed(f"generated report {record.id} differs from its wire form")


def measure_single(store: Store, reports: Reports) -> dict[str, Any]:
    steal = Steal()
    latencies: list[float] = []
    deadline = time.perf_counter() + SINGLE_S
    while time.perf_counter() < deadline:
        record = reports.next()
        t0 = time.perf_counter()
        if not store.ingest_report(record, time.time()):
            raise BenchmarkFailed(f"report {record.id} was not stored")
        latencies.append(time.perf_counter() - t0)
    return {
        "reports": len(latencies),
        "reports_per_s": round(len(latencies) / sum(latencies)),
        "commit_ms": _ms(percentiles(latencies)),
        "cpu_steal_percent": steal.percent(),
    }


def measure_store(store: Store, reports: Reports) -> dict[str, Any]:
    steal = Steal()
    latencies: list[float] = []
    stored = 0
    started = time.perf_counter()
    while time.perf_counter() - started < STORE_S:
        batch = reports.batch(BATCH)  # made outside the timed part
        t0 = time.perf_counter()
        results = store.ingest_reports(batch, time.time())
        latencies.append(time.perf_counter() - t0)
        if not all(results):
            raise BenchmarkFailed("a fresh report in a batch was not stored")
        stored += len(batch)
        if len(latencies) % 40 == 0:
            progress(f"store: {stored} reports, {stored / sum(latencies):.0f}/s in the store")
    inside = sum(latencies)
    return {
        "reports": stored,
        "batch_size": BATCH,
        "batches": len(latencies),
        "seconds_in_store": round(inside, 2),
        "reports_per_s": round(stored / inside),
        "wall_reports_per_s": round(stored / (time.perf_counter() - started)),
        "commit_ms": _ms(percentiles(latencies)),
        "cpu_steal_percent": steal.percent(),
    }


class _TimedStore(Store):
    """The store, noting each batch the Ingestor hands it (size and commit time)."""

    batches: list[tuple[int, float]]

    def ingest_reports(self, batch: Sequence[ReportRecord], now: float) -> list[bool]:
        t0 = time.perf_counter()
        stored = super().ingest_reports(batch, now)
        self.batches.append((len(batch), time.perf_counter() - t0))
        return stored


async def _end_to_end(store: _TimedStore, reports: Reports) -> dict[str, Any]:
    ingestor = Ingestor(store, max_batch=BATCH)
    ingestor.start()
    latencies: list[float] = []
    deadline = time.perf_counter() + E2E_S
    refused: list[str] = []

    async def submitter() -> None:
        while time.perf_counter() < deadline:
            record = reports.next()
            t0 = time.perf_counter()
            if not await ingestor.submit(record):
                refused.append(record.id)
            latencies.append(time.perf_counter() - t0)

    steal = Steal()
    started = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
    elapsed = time.perf_counter() - started
    await ingestor.close()
    if refused:
        raise BenchmarkFailed(f"{len(refused)} fresh reports were not stored, e.g. {refused[0]}")
    if ingestor.committed != len(latencies) or ingestor.failed_commits:
        raise BenchmarkFailed(
            f"{len(latencies)} submitted, {ingestor.committed} committed, "
            f"{ingestor.failed_commits} failed commits"
        )
    sizes = [n for n, _ in store.batches]
    return {
        "submitters": SUBMITTERS,
        "reports": len(latencies),
        "seconds": round(elapsed, 2),
        "reports_per_s": round(len(latencies) / elapsed),
        "commits": ingestor.commits,
        "batch_size": {**percentiles(sizes), "mean": round(sum(sizes) / len(sizes), 1)},
        "commit_ms": _ms(percentiles([s for _, s in store.batches])),
        "submit_to_durable_ms": _ms(percentiles(latencies)),
        "cpu_steal_percent": steal.percent(),
    }


def measure_wire(templates: dict[str, list[Template]]) -> dict[str, Any]:
    messages = [
        pb.Report.FromString(t.make(ID, 1.0, 2.0).body)
        for node in list(templates)[: WIRE_SAMPLES // VARIANTS]
        for t in templates[node]
    ]
    steal = Steal()
    t0 = time.perf_counter()
    for message in messages:
        report_record(message)
    per = (time.perf_counter() - t0) / len(messages)
    # The check against the node's catalog (server/given.py) that precedes it,
    # for an honest report: every result is a resource the node was given.
    given = [
        (m, Given({r.id: (r.manifest, tuple(r.controls)) for r in m.results})) for m in messages
    ]
    t0 = time.perf_counter()
    for message, catalog in given:
        believed(message, catalog)
    check = (time.perf_counter() - t0) / len(messages)
    return {
        "reports": len(messages),
        "ms_per_report": round(per * 1000, 3),
        "reports_per_s_one_core": round(1 / per),
        "check_ms_per_report": round(check * 1000, 3),
        "cpu_steal_percent": steal.percent(),
    }


class Steal:
    """The share of CPU time the hypervisor gave to other guests meanwhile ("steal").

    On a shared virtual machine a neighbour's load slows every phase here
    without any change in Plumb; this says how much, so a low number can be
    told apart from a slow store. None where /proc/stat has no steal column.
    """

    def __init__(self) -> None:
        self.start = _cpu_ticks()

    def percent(self) -> float | None:
        end = _cpu_ticks()
        if self.start is None or end is None or end[1] == self.start[1]:
            return None
        return round(100 * (end[0] - self.start[0]) / (end[1] - self.start[1]), 1)


def _cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the machine since boot, from /proc/stat."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: in user, nice]
    return (fields[7], sum(fields[:8])) if len(fields) >= 8 else None


def _ms(stats: dict[str, float]) -> dict[str, float]:
    return {k: (v if k == "n" else round(v * 1000, 2)) for k, v in stats.items()}


def _mix(templates: dict[str, list[Template]]) -> dict[str, float]:
    """Mean results per report in each status (reports pick templates uniformly)."""
    all_templates = [t for ts in templates.values() for t in ts]
    return {
        s.value: round(
            sum(1 for t in all_templates for r in t.record.results if r.status is s)
            / len(all_templates),
            2,
        )
        for s in Status
    }


def _count(store: Store, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _db_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("plumb.db*"))


def run() -> None:
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="plumb-bench-ingest-") as tmp:
        directory = Path(tmp)
        store = _TimedStore.create(f"sqlite:///{directory / 'plumb.db'}")
        store.batches = []
        try:
            nodes = [f"node-{i:03d}" for i in range(NODES)]
            store.add_token("bench", "h", {"role": "web"}, 0, 2**40, NODES)
            for node in nodes:
                store.enroll("bench", "h", node, "01", time.time())
            progress(f"{NODES} nodes enrolled; rendering {NODES * VARIANTS} report bodies")
            templates = make_templates(nodes, rng)
            reports = Reports(templates, rng)
            check_wire_identity(reports, 50)
            size = sum(len(t.record.body) for ts in templates.values() for t in ts) / (
                NODES * VARIANTS
            )
            wire = measure_wire(templates)
            progress(f"wire: report_record {wire['ms_per_report']} ms per report")
            start_made, start_drift = reports.made, reports.drift_events

            single = measure_single(store, reports)
            progress(
                f"single: {single['reports_per_s']} reports/s, one commit each "
                f"(CPU steal {single['cpu_steal_percent']}%)"
            )
            batched = measure_store(store, reports)
            progress(
                f"store: {batched['reports_per_s']} reports/s in batches of {BATCH} "
                f"(CPU steal {batched['cpu_steal_percent']}%)"
            )
            store.batches.clear()
            e2e = asyncio.run(_end_to_end(store, reports))
            progress(
                f"end to end: {e2e['reports_per_s']} reports/s, "
                f"mean batch {e2e['batch_size']['mean']} (CPU steal {e2e['cpu_steal_percent']}%)"
            )

            expected = reports.made - start_made
            if store.count_reports() != expected:
                raise BenchmarkFailed(
                    f"the store holds {store.count_reports()} reports, {expected} were stored"
                )
            drift = _count(store, drift_events)
            if drift != reports.drift_events - start_drift:
                raise BenchmarkFailed(
                    f"{drift} drift events stored, {reports.drift_events - start_drift} reported"
                )
            if _count(store, resource_status) != NODES * RESOURCES:
                raise BenchmarkFailed(
                    f"{_count(store, resource_status)} resource statuses, not {NODES * RESOURCES}"
                )
            db_bytes = _db_bytes(directory)
            mix = _mix(templates)
        finally:
            store.close()
    rate = min(batched["reports_per_s"], e2e["reports_per_s"])
    emit(
        "ingest",
        {
            "nodes": NODES,
            "resources_per_report": RESOURCES,
            "report_body_bytes_mean": round(size),
            "status_mix_per_report": mix,
            "drift_events_per_report": round(drift / expected, 2),
            "single": single,
            "store": batched,
            "end_to_end": e2e,
            "wire": wire,
            "stored_reports": expected,
            "stored_drift_events": drift,
            "db_bytes": db_bytes,
            "db_bytes_per_report": round(db_bytes / expected),
            "reports_per_s": rate,
        },
        {"reports_per_s": f">{TARGET_RATE}", "met": rate > TARGET_RATE},
    )


if __name__ == "__main__":
    main_guard(run)
