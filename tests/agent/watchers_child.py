"""The agent's Watchers over a real catalog, in a child of :mod:`tests.inotify_limits`.

    python -m tests.agent.watchers_child ROOT CATALOG_JSON

A daemon in miniature: the catalog is watched and run at once (as the daemon
does with a new catalog), and again whenever the watchers ask, each run by
the real engine in enforce mode under ROOT. It says ``{"run": {"trigger": ...,
"results": {id: status}}}`` after each run and ``{"log": [level, message]}``
for every record of the watchers' logger; it answers ``{"conditions": true}``
with ``{"conditions": [[name, detail], ...]}`` and ``{"catalog": {...}}`` by
watching and running that one instead. End of input stops the watchers.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
import uuid
from pathlib import Path

from agent import engine
from agent.report import RunReport, Trigger
from agent.watch import Watchers
from modules.base import Context
from modules.catalog import Catalog
from tests.inotify_limits import commands, emit


class Said(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        emit(log=[record.levelname, record.getMessage()])


def catalog(raw: dict[str, object]) -> Catalog:
    return Catalog.from_json(json.dumps({"node": "node", **raw}).encode())


def run_all(root: Path, watchers: Watchers, runs: queue.Queue[tuple[Catalog, Trigger]]) -> None:
    while True:
        current, trigger = runs.get()
        watchers.run_started()
        started = time.time()
        results = engine.run(current.resources, Context(root=root))
        report = RunReport(
            str(uuid.uuid4()), "node", current.revision, False, trigger, started, time.time(),
            tuple(results),
        )  # fmt: skip
        watchers.run_finished(report)
        emit(run={"trigger": trigger.value, "results": {r.id: r.status.value for r in results}})


def main() -> None:
    root, current = Path(sys.argv[1]), catalog(json.loads(sys.argv[2]))
    logger = logging.getLogger("plumb.agent.watch")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Said())
    runs: queue.Queue[tuple[Catalog, Trigger]] = queue.Queue()
    watchers = Watchers(root, lambda: runs.put((current, Trigger.WATCH)))
    threading.Thread(target=run_all, args=(root, watchers, runs), daemon=True).start()
    watchers.start(current)
    runs.put((current, Trigger.PUSH))
    for command in commands():
        if "conditions" in command:
            emit(conditions=[[c.name, c.detail] for c in watchers.conditions()])
        if "catalog" in command:
            current = catalog(command["catalog"])
            watchers.start(current)
            runs.put((current, Trigger.PUSH))
    watchers.stop()


if __name__ == "__main__":
    main()
