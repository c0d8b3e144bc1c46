"""Agent footprint: a real `plumb-agent daemon`, enrolled with a real `plumb-server`.

Measured, in this order:

- ``startup_s``: from starting the daemon process until it logs that its
  session with the server is established (the server has answered), with the
  100-file catalog cached; several starts.
- ``idle``: RSS, USS and PSS (psutil ``memory_full_info``) of the daemon once
  connected, its first run done and reported, watchers on; then CPU seconds
  (user + system) it uses over IDLE_S seconds of idling, and RSS/USS again.
- ``noop_run``: for 100 and 1000 ``file`` resources, all already in sync:
  the in-daemon time of periodic runs (the report's finished_at - started_at,
  i.e. the engine, drift bookkeeping and report, as the daemon timed it), and
  the wall time of whole ``plumb-agent run --once`` processes (interpreter
  start, imports, TLS, run, report acknowledged).

Everything runs on this one machine; the server is idle while the agent is
measured. The server process maps the same libraries (grpc, cryptography,
libpython), so the agent's USS here is lower than on a host of its own;
RSS counts those pages either way. Exits 1 rather than print a number it could not measure.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench._common import BenchmarkFailed, emit, main_guard, percentiles, progress
from tests.integration.harness import Agent, Server, command, terminate

NODE = "footprint-1"
IDLE_S = 60.0
STARTS = 5
NOOP_RUNS = 10
ONCE_RUNS = 5
SIZES = (100, 1000)
TARGET_IDLE_RSS = 45 * 2**20
TARGET_NOOP_100_S = 0.050


def manifest(files: int) -> str:
    lines = ["name: footprint", "target: {all: true}", "resources:"]
    for i in range(files):
        lines += [
            "  - kind: file",
            f"    name: f{i}",
            f'    spec: {{path: /srv/bench/f{i}.conf, content: "value {i}\\n", mode: "0640"}}',
        ]
    return "\n".join(lines) + "\n"


class Daemon:
    """``plumb-agent daemon`` with its log read line by line as it comes."""

    def __init__(self, agent: Agent, interval: float) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                *command("agent.main"),
                "--config",
                "/dev/null",
                "--state-dir",
                str(agent.state_dir),
                "daemon",
                "--root",
                str(agent.root),
                "--interval",
                str(interval),
                "--splay",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self.lines.append((time.perf_counter(), line))
                self._cond.notify_all()

    def wait_line(self, fragment: str, timeout: float = 30) -> float:
        """perf_counter() when a log line containing ``fragment`` was read."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: next((t for t, line in self.lines if fragment in line), None), timeout
            )
        if found is None:
            self.stop()
            raise BenchmarkFailed(f"the agent never logged {fragment!r}:\n{self.log()[-3000:]}")
        return float(found)

    def log(self) -> str:
        with self._cond:
            return "".join(line for _, line in self.lines)

    def stop(self) -> None:
        terminate(self.process, 15)
        if self.process.returncode not in (0, -15):
            raise BenchmarkFailed(f"the daemon exited {self.process.returncode}:\n{self.log()}")


def wait(predicate: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def last_run(agent: Agent) -> dict[str, Any] | None:
    try:
        return dict(json.loads((agent.state_dir / "last_run.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def settled(agent: Agent, files: int, after: str | None = None) -> bool:
    """A run newer than report ``after`` left all ``files`` in sync or repaired,
    and the server acknowledged its report (the agent's spool is empty)."""
    run = last_run(agent)
    if run is None or run["report_id"] == after:
        return False
    summary = run["summary"]
    if summary["in_sync"] + summary["repaired"] != files:
        return False
    with closing(sqlite3.connect(agent.state_dir / "spool.db", timeout=30)) as spool:
        return int(spool.execute("SELECT count(*) FROM reports").fetchone()[0]) == 0


def last_report_id(agent: Agent) -> str | None:
    run = last_run(agent)
    return str(run["report_id"]) if run else None


def push(server: Server, workdir: Path, files: int) -> None:
    path = workdir / f"footprint-{files}.yaml"
    path.write_text(manifest(files))
    pushed = server.push(path)
    if pushed.returncode != 0:
        raise BenchmarkFailed(f"push refused: {pushed.stderr}")


def memory(pid: int) -> dict[str, int]:
    info = psutil.Process(pid).memory_full_info()
    return {"rss_bytes": info.rss, "uss_bytes": info.uss, "pss_bytes": info.pss}


def measure_startup(agent: Agent) -> dict[str, float]:
    samples = []
    for _ in range(STARTS):
        previous = last_report_id(agent)
        daemon = Daemon(agent, interval=3600)
        samples.append(daemon.wait_line("session established") - daemon.started)
        wait(
            lambda previous=previous: settled(agent, SIZES[0], previous),
            "the start-up run reported",
        )
        daemon.stop()
    progress(f"start-up to session established: median {median(samples) * 1000:.0f} ms")
    return {k: round(v, 3) for k, v in percentiles(samples).items()}


def measure_idle(agent: Agent) -> dict[str, Any]:
    previous = last_report_id(agent)
    daemon = Daemon(agent, interval=3600)
    try:
        daemon.wait_line("session established")
        daemon.wait_line("watching")
        wait(lambda: settled(agent, SIZES[0], previous), "the start-up run reported")
        process = psutil.Process(daemon.process.pid)
        before = memory(daemon.process.pid)
        cpu = process.cpu_times()
        progress(
            f"idle: RSS {before['rss_bytes'] / 2**20:.1f} MiB, USS "
            f"{before['uss_bytes'] / 2**20:.1f} MiB; measuring CPU over {IDLE_S:.0f}s"
        )
        time.sleep(IDLE_S)  # the measurement window, not a synchronisation
        after_cpu = process.cpu_times()
        after = memory(daemon.process.pid)
        threads = process.num_threads()
    finally:
        daemon.stop()
    cpu_s = (after_cpu.user - cpu.user) + (after_cpu.system - cpu.system)
    progress(f"idle CPU over {IDLE_S:.0f}s: {cpu_s:.3f}s")
    return {
        "catalog_files": SIZES[0],
        "connected": before,
        f"after_{IDLE_S:.0f}s": after,
        "cpu_s": round(cpu_s, 4),
        "cpu_window_s": IDLE_S,
        "threads": threads,
    }


def measure_noop(server: Server, agent: Agent, workdir: Path, files: int) -> dict[str, Any]:
    previous = last_report_id(agent)
    push(server, workdir, files)
    daemon = Daemon(agent, interval=1)
    try:
        wait(lambda: settled(agent, files, previous), f"{files} files converged", timeout=120)
        seen: dict[str, float] = {}

        def collect() -> bool:
            run = last_run(agent)
            if run and run["trigger"] == "schedule" and run["summary"]["in_sync"] == files:
                seen[run["report_id"]] = run["finished_at"] - run["started_at"]
            return len(seen) >= NOOP_RUNS

        wait(collect, f"{NOOP_RUNS} no-op periodic runs", timeout=NOOP_RUNS * 5 + 30)
        rss = memory(daemon.process.pid)
    finally:
        daemon.stop()
    in_daemon = percentiles(list(seen.values()))
    wall = []
    for _ in range(ONCE_RUNS):
        started = time.perf_counter()
        result = agent.run_once()
        wall.append(time.perf_counter() - started)
        run = last_run(agent)
        if result.returncode != 0 or not run or run["summary"]["in_sync"] != files:
            raise BenchmarkFailed(f"run --once was not a no-op run: {result.stderr[-2000:]}")
    progress(
        f"no-op run of {files} files: {in_daemon['p50'] * 1000:.1f} ms in the daemon, "
        f"{median(wall):.2f} s as a process"
    )
    return {
        "in_daemon_s": {k: round(v, 4) for k, v in in_daemon.items()},
        "run_once_process_s": {k: round(v, 3) for k, v in percentiles(wall).items()},
        "daemon_memory_after": rss,
    }


def measure(workdir: Path) -> dict[str, Any]:
    server = Server(workdir / "server")
    server.start()
    agent = Agent(NODE, workdir / "agents")
    try:
        enrolled = agent.enroll(server, server.token())
        if enrolled.returncode != 0:
            raise BenchmarkFailed(f"enroll failed: {enrolled.stderr}")
        (agent.root / "srv" / "bench").mkdir(parents=True)
        push(server, workdir, SIZES[0])
        first = Daemon(agent, interval=3600)  # receives and converges the catalog
        first.wait_line("session established")
        wait(lambda: settled(agent, SIZES[0], None), "the first catalog converged")
        first.stop()

        results: dict[str, Any] = {"startup_s": measure_startup(agent)}
        results["idle"] = measure_idle(agent)
        results["noop_run"] = {f"files_{n}": measure_noop(server, agent, workdir, n) for n in SIZES}
    finally:
        agent.stop()
        server.stop()
    idle_rss = results["idle"]["connected"]["rss_bytes"]
    noop_100 = results["noop_run"][f"files_{SIZES[0]}"]["in_daemon_s"]["p50"]
    results["met"] = {
        "idle_rss": idle_rss < TARGET_IDLE_RSS,
        "noop_run_100_files_in_daemon": noop_100 < TARGET_NOOP_100_S,
    }
    return results


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="plumb-bench-agent-"))
    try:
        results = measure(workdir)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    emit(
        "agent",
        results,
        targets={
            "idle_rss_bytes": f"<{TARGET_IDLE_RSS}",
            "noop_run_100_files_in_daemon_s": f"<{TARGET_NOOP_100_S}",
        },
    )


if __name__ == "__main__":
    main_guard(main)
