"""Drift: an out-of-band change to a managed file -> repaired by the agent's watcher.

A real `plumb-server` and one real enrolled `plumb-agent daemon` (watchers on,
periodic runs every hour, so none happens during the benchmark) manage
FILES files under the agent's sandbox root. Each sample changes one of them
out of band (rotating: rewritten in place, replaced by a rename as editors
do, chmod) and measures:

- ``repair_ms``: from the change until the file is as desired again, seen
  through inotify on the benchmark's side (no polling loop competing with
  the agent for the CPU);
- ``visible_ms``: from the change until the drift event is stored on the
  server, by polling its SQLite ``drift_events`` table every 2 ms (what
  `plumb drift` reads).

A sample that is not repaired, or whose drift event is not stored, within
DEADLINE_S fails the benchmark: there is no number for it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inotify_simple import INotify, flags

from bench._common import BenchmarkFailed, emit, main_guard, percentiles, progress
from tests.integration.harness import Agent, Server

FILES = 20
SAMPLES = 50
DEADLINE_S = 5.0
TARGET_P99_MS = 1000.0
NODE = "drift-1"
MODE = 0o640


def manifest() -> str:
    lines = ["name: drift", "target: {all: true}", "resources:"]
    for i in range(FILES):
        lines += [
            "  - kind: file",
            f"    name: f{i}",
            f'    spec: {{path: /etc/bench/f{i}.conf, content: "{content(i)}", mode: "0640"}}',
        ]
    return "\n".join(lines) + "\n"


def content(i: int) -> str:
    return f"managed value {i}\\n"


def desired(i: int) -> bytes:
    return f"managed value {i}\n".encode()


class Changes:
    """The out-of-band changes, in rotation; each returns the check for "repaired"."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, i: int) -> Path:
        return self.root / "etc" / "bench" / f"f{i}.conf"

    def make(self, sample: int) -> tuple[str, Callable[[], bool]]:
        i = sample % FILES
        path = self.path(i)
        how = ("write", "replace", "chmod")[sample % 3]
        if how == "write":
            path.write_text(f"tampered {sample}\n")
        elif how == "replace":
            edited = path.with_name(f".f{i}.swp")
            edited.write_text(f"tampered {sample}\n")
            os.replace(edited, path)
        else:
            path.chmod(0o666)
        return how, lambda: _is_desired(path, i)


def _is_desired(path: Path, i: int) -> bool:
    try:
        return path.read_bytes() == desired(i) and path.stat().st_mode & 0o777 == MODE
    except FileNotFoundError:
        return False


def wait_repaired(inotify: INotify, repaired: Callable[[], bool], started: float) -> float:
    """Seconds from ``started`` until ``repaired()``; re-checked on every inotify event."""
    while not repaired():
        left = DEADLINE_S - (time.perf_counter() - started)
        if left <= 0:
            raise BenchmarkFailed(f"a change was not repaired within {DEADLINE_S}s")
        inotify.read(timeout=max(1, int(left * 1000)))
    return time.perf_counter() - started


def wait_stored(db: sqlite3.Connection, count: int, started: float) -> float:
    """Seconds from ``started`` until the server holds ``count`` drift events for the node."""
    while True:
        (stored,) = db.execute(
            "SELECT count(*) FROM drift_events WHERE node = ?", (NODE,)
        ).fetchone()
        if stored >= count:
            return time.perf_counter() - started
        if time.perf_counter() - started > DEADLINE_S:
            raise BenchmarkFailed(f"drift event {count} was not stored within {DEADLINE_S}s")
        time.sleep(0.002)


def converge(server: Server, agent: Agent, workdir: Path) -> None:
    (workdir / "drift.yaml").write_text(manifest())
    pushed = server.push(workdir / "drift.yaml")
    if pushed.returncode != 0:
        raise BenchmarkFailed(f"push refused: {pushed.stderr}")
    changes = Changes(agent.root)
    deadline = time.monotonic() + 30
    while not all(_is_desired(changes.path(i), i) for i in range(FILES)):
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"the agent did not converge:\n{agent.logs()[-2000:]}")
        time.sleep(0.05)
    while server.nodes().get(NODE, {}).get("applied_revision") != 1:
        if time.monotonic() > deadline:
            raise BenchmarkFailed("the first report was not stored")
        time.sleep(0.05)


def measure(workdir: Path) -> dict[str, object]:
    server = Server(workdir / "server")
    server.start()
    agent = Agent(NODE, workdir / "agents")
    try:
        enrolled = agent.enroll(server, server.token())
        if enrolled.returncode != 0:
            raise BenchmarkFailed(f"enroll failed: {enrolled.stderr}")
        (agent.root / "etc" / "bench").mkdir(parents=True)
        # It changes the same objects again and again on purpose: not flapping.
        agent.start(3600, 0, "--flap-repairs", "0")
        converge(server, agent, workdir)
        progress(f"{FILES} files converged; {SAMPLES} out-of-band changes follow")

        changes = Changes(agent.root)
        db = sqlite3.connect(f"file:{workdir / 'server' / 'plumb.db'}?mode=ro", uri=True)
        repair: list[float] = []
        visible: list[float] = []
        by_how: dict[str, list[float]] = {}
        with INotify() as inotify:
            mask = flags.MOVED_TO | flags.CLOSE_WRITE | flags.ATTRIB | flags.CREATE
            inotify.add_watch(changes.path(0).parent, mask)
            for sample in range(SAMPLES):
                inotify.read(timeout=0)  # forget the events of the previous sample
                started = time.perf_counter()
                how, repaired = changes.make(sample)
                seconds = wait_repaired(inotify, repaired, started)
                repair.append(seconds * 1000)
                by_how.setdefault(how, []).append(seconds * 1000)
                visible.append(wait_stored(db, sample + 1, started) * 1000)
        db.close()
        trigger = server.cli_json("report", NODE)["trigger"]
        if trigger != "watch":
            raise BenchmarkFailed(f"the last run was triggered by {trigger}, not by a watcher")
        events = server.cli_json("drift", "--node", NODE).get("events", [])
        if len(events) < SAMPLES:
            raise BenchmarkFailed(f"plumb drift shows {len(events)} events, not {SAMPLES}")
        stats = percentiles(repair)
        progress(f"repair p50 {stats['p50']:.1f} ms, p99 {stats['p99']:.1f} ms")
        return {
            "files": FILES,
            "repair_ms": _rounded(stats),
            "repair_ms_by_change": {how: _rounded(percentiles(v)) for how, v in by_how.items()},
            "drift_visible_on_server_ms": _rounded(percentiles(visible)),
            "last_report_trigger": trigger,
            "met": {"repair_p99": stats["p99"] < TARGET_P99_MS},
        }
    finally:
        agent.stop()
        server.stop()


def _rounded(stats: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in stats.items()}


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="plumb-bench-drift-"))
    try:
        results = measure(workdir)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    emit(
        "drift",
        results,
        targets={
            "repair_ms_p99": f"<{TARGET_P99_MS:.0f}",
            "setup": "one real agent daemon (watchers on, --interval 3600) and a real "
            "server on the same machine",
        },
    )


if __name__ == "__main__":
    main_guard(main)
