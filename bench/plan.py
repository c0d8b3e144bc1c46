"""Plan: N agents connected -> `plumb plan` of a changed manifest -> every agent's dry run back.

A real server and N simulated agents (bench/_fleet.py) at a baseline
revision; then PLANS plans of a changed manifest (motd and app change, old
does not) through the real Admin API, each on a new operator channel as
`plumb plan` makes one. Per plan:

- ``plan_s``: wall time of the Plan RPC, from the call until its reply (the
  server signs a candidate catalog per node, sends it as a dry run over the
  node's session, and gathers the answers);
- ``received_s`` / ``answered_s``: per node, from the call until the
  simulated agent got its dry run and until it sent its answer (same
  machine, same clock); ``first_received_s``, until the first agent got
  one, is about what the server spends before it sends any (compiling and
  signing N candidate catalogs; the payload names the node, so each is
  signed on its own).

Every plan must be answered by all N agents, each answer a noop PLAN report
with motd and app DRIFTED and old IN_SYNC. Afterwards no simulated agent
may have applied anything (all still at the baseline revision, no catalog
received since) and the server must have stored no revision and no report.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchmarkFailed, emit, main_guard, percentiles, progress
from bench._fleet import MANIFEST, FleetBench, merged
from protos import plumb_pb2 as pb

N = 1000
PLANS = 10
TARGET_P99_S = 2.0
POINTS = (50, 90, 99)
BASELINE, CANDIDATE = 1, 2  # MANIFEST's revision hint: what motd and app say
EXPECTED = {"file/motd": pb.DRIFTED, "file/app": pb.DRIFTED, "file/old": pb.IN_SYNC}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    plans = int(sys.argv[2]) if len(sys.argv) > 2 else PLANS
    bench = FleetBench(n)
    try:
        bench.setup()
        bench.start_server()
        bench.start_agents()
        bench.wait("connected", timeout=60 + n / 50)
        _, pushed = bench.push(BASELINE)
        bench.wait("round", timeout=120, revision=pushed.revision)
        catalogs_before = _catalogs_received(bench)
        stored_before = _stored(bench)
        progress(f"{n} agents connected and in sync at revision {pushed.revision}")
        rounds = [_plan(bench, n, k) for k in range(1, plans + 1)]
        applied, catalogs_after = _agents_state(bench)
        stored_after = _stored(bench)
    finally:
        bench.close()
    plan_s = [r["plan_s"] for r in rounds]
    summary = percentiles(plan_s, POINTS)
    unchanged = (
        applied == {str(pushed.revision): n}
        and catalogs_after == catalogs_before
        and stored_after == stored_before
    )
    emit(
        "plan",
        {
            "agents": n,
            "plans": plans,
            "plan_s": summary,
            "answered": min(r["answered"] for r in rounds),
            "no_answer": max(r["no_answer"] for r in rounds),
            "refused": max(r["refused"] for r in rounds),
            "offline": max(r["offline"] for r in rounds),
            "rounds": rounds,
            "agents_state": {
                "baseline_revision": pushed.revision,
                "applied_revisions": applied,
                "catalogs_received_during_plans": catalogs_after - catalogs_before,
                "server_stored_before": stored_before,
                "server_stored_after": stored_after,
                "unchanged": unchanged,
            },
            "met": {
                "p99_plan_s": summary["p99"] < TARGET_P99_S,
                "all_answered": all(r["answered"] == n for r in rounds),
                "no_agent_changed_state": unchanged,
            },
        },
        targets={
            "p99_plan_s": f"<{TARGET_P99_S} (N={N}, answered by all N)",
            "load_generator": "2 processes on the same machine as the server",
        },
    )


def _plan(bench: FleetBench, n: int, k: int) -> dict[str, Any]:
    files = [pb.ManifestFile(path="bench.yaml", content=MANIFEST.format(revision=CANDIDATE))]
    stub = bench.admin()  # a new channel per plan, as each `plumb plan` makes one
    t0, started = time.time(), time.monotonic()
    reply = stub.Plan(pb.PlanRequest(files=files), timeout=120)
    plan_s = time.monotonic() - started
    if reply.errors:
        raise BenchmarkFailed(f"plan {k} refused: {reply.errors}")
    wrong = [p.node_name for p in reply.answered if not _as_expected(p)]
    if wrong:
        raise BenchmarkFailed(f"plan {k}: {len(wrong)} answers not as expected, e.g. {wrong[0]}")
    bench.command("dry_runs")
    events = bench.wait("dry_runs", timeout=30)
    received = _rounded(percentiles([t - t0 for t in merged(events, "t_received")], POINTS))
    answered = _rounded(percentiles([t - t0 for t in merged(events, "t_answered")], POINTS))
    progress(
        f"plan {k}: {plan_s:.3f}s, {len(reply.answered)}/{n} answered, "
        f"answers sent p99 {answered['p99']:.3f}s max {answered['max']:.3f}s"
    )
    return {
        "plan_s": round(plan_s, 4),
        # Before the first dry run reaches an agent: compiling and signing N catalogs.
        "first_received_s": round(min(merged(events, "t_received")) - t0, 4),
        "answered": len(reply.answered),
        "no_answer": len(reply.no_answer),
        "refused": len(reply.refused),
        "offline": len(reply.offline),
        "received_s": received,
        "answered_s": answered,
    }


def _rounded(summary: dict[str, float]) -> dict[str, float]:
    return {k: v if k == "n" else round(v, 4) for k, v in summary.items()}


def _as_expected(plan: pb.NodePlan) -> bool:
    report = plan.report
    statuses = {r.id: r.status for r in report.results}
    return (
        report.node_name == plan.node_name
        and report.noop
        and report.trigger == pb.PLAN
        and statuses == EXPECTED
        and all(r.changes for r in report.results if r.status == pb.DRIFTED)
    )


def _catalogs_received(bench: FleetBench) -> int:
    bench.command("dry_runs")  # also says how many catalogs arrived so far
    return sum(e["catalogs"] for e in bench.wait("dry_runs", timeout=30))


def _agents_state(bench: FleetBench) -> tuple[dict[str, int], int]:
    """Each simulated agent's applied revision (revision: agents), and catalogs received."""
    bench.command("dry_runs")
    events = bench.wait("dry_runs", timeout=30)
    applied: dict[str, int] = {}
    for event in events:
        for revision, count in event["applied"].items():
            applied[revision] = applied.get(revision, 0) + count
    return applied, sum(e["catalogs"] for e in events)


def _stored(bench: FleetBench) -> dict[str, int]:
    """What a plan must not add to the store: revisions and reports."""
    with sqlite3.connect(bench.data / "plumb.db") as db:
        return {
            table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("revisions", "reports")
        }


if __name__ == "__main__":
    main_guard(main)
