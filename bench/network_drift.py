"""Network drift: an out-of-band route or firewall change -> repaired by the agent's watchers.

A real `plumb-server` and one real `plumb-agent daemon` (periodic runs every
hour, so none happens during the benchmark), each in its own network
namespace joined by a bridge (tests/integration/netlab.py). The agent manages
an nftables table and a route. Each sample deletes the route
(`ip route del`) or a rule (`nft delete rule`) out of band and measures:

- ``repair_ms``: from the change until the route or the rule is back, polled
  with `ip -j route` / `nft -j list chain` (each poll is a process, about
  5 ms: the figures carry that resolution);
- ``visible_ms``: from the change until the drift event is stored on the server.

A sample not repaired, or not stored, within DEADLINE_S fails the benchmark.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchmarkFailed, emit, main_guard, percentiles, progress
from tests.integration.harness import Agent, Server
from tests.integration.netlab import SERVER_IP, NetLab
from tests.integration.test_network import NETWORK

SAMPLES_EACH = 20
DEADLINE_S = 5.0
TARGET_P99_MS = 1000.0
ROUTE = "198.51.100.0/24"


def _route_present(ns: str) -> bool:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "route", "show", ROUTE], capture_output=True, text=True, check=True
    ).stdout
    return bool(json.loads(out))


def _rules(ns: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "chain", "inet", "plumb", "input"],
        capture_output=True,
        text=True,
    ).stdout
    return [i["rule"] for i in json.loads(out or '{"nftables": []}')["nftables"] if "rule" in i]


def _until(condition: Callable[[], bool], started: float, what: str) -> float:
    while not condition():
        if time.monotonic() - started > DEADLINE_S:
            raise BenchmarkFailed(f"{what} not seen within {DEADLINE_S}s")
    return (time.monotonic() - started) * 1000


def _drift_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM drift_events").fetchone()[0])


def measure(workdir: Path) -> dict[str, object]:
    lab = NetLab(["edge"])
    server = Server(workdir / "server", netns=lab.server, host=SERVER_IP)
    agent = Agent("edge", workdir / "agents", netns=lab.hosts["edge"])
    ns = lab.hosts["edge"]
    try:
        server.start()
        if agent.enroll(server, server.token()).returncode != 0:
            raise BenchmarkFailed("enrollment failed")
        # It changes the same objects again and again on purpose: not flapping.
        agent.start(3600, 0, "--flap-repairs", "0")
        (workdir / "network.yaml").write_text(NETWORK)
        if server.push(workdir / "network.yaml").returncode != 0:
            raise BenchmarkFailed("push refused")
        _until(lambda: _route_present(ns) and len(_rules(ns)) == 3, time.monotonic(), "converge")
        progress("agent converged; out-of-band changes follow")
        db = server.data_dir / "plumb.db"
        samples: dict[str, dict[str, list[float]]] = {
            kind: {"repair_ms": [], "visible_ms": []} for kind in ("route", "firewall")
        }
        for i in range(2 * SAMPLES_EACH):
            kind = "route" if i % 2 == 0 else "firewall"
            before = _drift_count(db)
            started = time.monotonic()
            if kind == "route":
                subprocess.run(["ip", "-n", ns, "route", "del", ROUTE], check=True)
                repaired = _until(lambda: _route_present(ns), started, "route repair")
            else:
                handle = str(_rules(ns)[-1]["handle"])
                subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        "nft",
                        "delete",
                        "rule",
                        "inet",
                        "plumb",
                        "input",
                        "handle",
                        handle,
                    ],
                    check=True,
                )
                repaired = _until(lambda: len(_rules(ns)) == 3, started, "rule repair")
            visible = _until(lambda b=before: _drift_count(db) > b, started, "drift event")
            samples[kind]["repair_ms"].append(repaired)
            samples[kind]["visible_ms"].append(visible)
        results: dict[str, object] = {
            kind: {
                m: {k: round(v, 1) for k, v in percentiles(vals).items()} for m, vals in by.items()
            }
            for kind, by in samples.items()
        }
        worst = max(percentiles(s["repair_ms"])["p99"] for s in samples.values())
        results["met"] = {"repair_p99": worst < TARGET_P99_MS}
        return results
    finally:
        agent.stop()
        server.stop()
        lab.close()


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="plumb-bench-netdrift-"))
    try:
        results = measure(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    emit(
        "network_drift",
        results,
        targets={
            "repair_ms_p99": f"<{TARGET_P99_MS:.0f}",
            "setup": "server and agent daemon in separate network namespaces on one machine",
        },
    )


if __name__ == "__main__":
    main_guard(main)
