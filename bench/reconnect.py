"""Reconnect storm: kill -9 the server with N agents connected, restart it, time the recovery.

Every simulated agent writes one report while the server is down (as its
periodic run would) and must deliver it after reconnecting. Afterwards the
store must hold exactly two reports per node (the one before the crash and
the one from the outage): one fewer is a lost report, one more a duplicate.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchmarkFailed, emit, main_guard, percentiles, progress
from bench._fleet import FleetBench, merged

N = 1000
TARGET_S = 5.0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    bench = FleetBench(n)
    try:
        bench.setup()
        bench.start_server()
        bench.start_agents()
        bench.wait("connected", timeout=60 + n / 50)
        _, reply = bench.push(1)
        bench.wait("round", timeout=120, revision=reply.revision)
        progress(f"{n} agents connected and in sync at revision {reply.revision}")

        killed = bench.kill_server()
        restarted = bench.start_server()
        serving = time.time()
        progress(f"server killed and restarted; serving after {serving - killed:.2f}s")
        events = bench.wait("resynced", timeout=120, round=1)
        times = merged(events, "t")
        since_restart = percentiles([t - restarted for t in times])
        since_serving = percentiles([t - serving for t in times])
        progress(f"all {n} back in sync {since_restart['max']:.2f}s after the restart")
        counts = _reports_per_node(bench)
        if counts != {2: n}:
            raise BenchmarkFailed(
                f"reports per node should be exactly 2 for all {n} nodes, "
                f"got {counts} (count: nodes)"
            )
        emit(
            "reconnect",
            {
                "agents": n,
                "restart_to_listening_s": round(serving - restarted, 3),
                "back_in_sync_since_restart_s": since_restart,
                "back_in_sync_since_listening_s": since_serving,
                "reports_per_node": counts,
                "met": {
                    "all_back_in_sync_s": since_restart["max"] < TARGET_S,
                    "no_report_lost_or_duplicated": True,
                },
            },
            targets={
                "all_back_in_sync_s": f"<{TARGET_S} (N={N})",
                "agent_backoff": "full jitter over min(60, 0.5 * 2**attempt) s",
            },
        )
    finally:
        bench.close()


def _reports_per_node(bench: FleetBench) -> dict[int, int]:
    with sqlite3.connect(bench.data / "plumb.db") as db:
        rows = db.execute(
            "SELECT per_node, count(*) FROM (SELECT count(*) AS per_node "
            "FROM reports GROUP BY node) GROUP BY per_node"
        ).fetchall()
    return {int(per_node): int(nodes) for per_node, nodes in rows}


if __name__ == "__main__":
    main_guard(main)
