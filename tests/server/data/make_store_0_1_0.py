"""Make ``store-0.1.0.sql``: a store as Plumb 0.1.0 left it, with rows in every table.

The upgrade tests (tests/server/test_migrations.py) load that dump and migrate
it, so it must be the schema the 0.1.0 release created, not whatever
server/store.py says today. It was made once, with the code of the 0.1.0
release (commit 0817cba, where ``Store()`` still created its own tables):

    git archive 0817cba | tar -x -C /tmp/plumb-0.1.0
    PYTHONPATH=/tmp/plumb-0.1.0 python tests/server/data/make_store_0_1_0.py \
        > tests/server/data/store-0.1.0.sql

This script is kept as the record of how the rows came about: the real push
path (manifests validated and compiled into catalogs), enrollment spending a
token, presence with facts, and agents' reports (protobuf bodies) through the
real ingest path, which fills resource_status and drift_events. It only runs
against 0.1.0's code.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

from protos import plumb_pb2 as pb
from server import wire
from server.fleet import Fleet
from server.pki import create_ca
from server.store import NodeSeen, Store

T0 = 1_700_000_000.0  # fixed times: the dump is the same every time it is made

WEB = """\
name: web
target:
  labels: {role: web}
mode: enforce
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "managed by Plumb\\n", mode: "0644"}
    controls: [CIS-1.7.1]
  - kind: file
    name: app-conf
    spec: {path: /etc/app.conf, content: "workers = 4\\n", mode: "0600"}
    require: [file/motd]
    controls: [ISO27001-A.8.9]
"""

DB = """\
name: db
target:
  labels: {role: db}
mode: audit
resources:
  - kind: file
    name: pg-conf
    spec: {path: /etc/pg.conf, content: "max_connections = 100\\n"}
    controls: [CIS-6.1]
"""


def result(
    rid: str, manifest: str, status: int, *changes: tuple[str, str, str], **extra: object
) -> pb.ResourceResult:
    kind, name = rid.split("/", 1)
    return pb.ResourceResult(
        id=rid,
        kind=kind,
        name=name,
        manifest=manifest,
        status=status,  # type: ignore[arg-type]
        changes=[pb.Change(field=f, observed=o, desired=d) for f, o, d in changes],
        **extra,  # type: ignore[arg-type]
    )


def reports() -> list[pb.Report]:
    return [
        pb.Report(
            id="web-1-0001", node_name="web-1", revision=1, trigger=pb.PUSH,
            started_at=T0 + 100, finished_at=T0 + 101,
            results=[
                result("file/motd", "web", pb.REPAIRED,
                       ("content", "hello\n", "managed by Plumb\n"),
                       controls=["CIS-1.7.1"], drift=False, duration_s=0.01),
                result("file/app-conf", "web", pb.IN_SYNC, controls=["ISO27001-A.8.9"]),
            ],
        ),
        pb.Report(
            id="web-1-0002", node_name="web-1", revision=2, trigger=pb.WATCH,
            started_at=T0 + 300, finished_at=T0 + 301,
            results=[
                result("file/motd", "web", pb.REPAIRED, ("mode", "0666", "0644"),
                       controls=["CIS-1.7.1"], drift=True, observed={"mode": "0666"}),
                result("file/app-conf", "web", pb.FAILED, controls=["ISO27001-A.8.9"],
                       error="open /etc/app.conf: permission denied"),
            ],
        ),
        pb.Report(
            id="web-2-0001", node_name="web-2", revision=2, noop=True, trigger=pb.SCHEDULE,
            started_at=T0 + 310, finished_at=T0 + 311,
            results=[
                result("file/motd", "web", pb.DRIFTED, ("content", "", "managed by Plumb\n"),
                       controls=["CIS-1.7.1"], drift=True),
                result("file/app-conf", "web", pb.SKIPPED, controls=["ISO27001-A.8.9"]),
            ],
        ),
        pb.Report(
            id="db-1-0001", node_name="db-1", revision=2, trigger=pb.SCHEDULE,
            started_at=T0 + 320, finished_at=T0 + 321,
            results=[
                result("file/pg-conf", "db", pb.DRIFTED,
                       ("content", "max_connections = 500\n", "max_connections = 100\n"),
                       controls=["CIS-6.1"], drift=True),
            ],
        ),
    ]  # fmt: skip


def populate(store: Store) -> None:
    store.add_token("0a1b2c3d", "5" * 64, {"role": "web"}, T0, T0 + 3600, uses=3)
    store.add_token("4e5f6a7b", "6" * 64, {"role": "db"}, T0, T0 + 3600, uses=1)
    store.add_token("8c9d0e1f", "7" * 64, {}, T0, T0 + 60, uses=5)  # never used, expired
    store.enroll("0a1b2c3d", "5" * 64, "web-1", "1f2e3d", now=T0 + 10)
    store.enroll("0a1b2c3d", "5" * 64, "web-2", "4c5b6a", now=T0 + 11)
    store.enroll("4e5f6a7b", "6" * 64, "db-1", "7d8e9f", now=T0 + 12)
    fleet = Fleet(store, create_ca("fixture signer"), clock=lambda: T0 + 50)
    assert fleet.push([("web.yaml", WEB)]).revision == 1
    fleet.clock = lambda: T0 + 200
    web = WEB.replace("workers = 4", "workers = 8")
    assert fleet.push([("web.yaml", web), ("db.yaml", DB)]).revision == 2
    store.nodes_seen(
        {
            "web-1": NodeSeen(T0 + 90, 1, {"os": "debian-12", "arch": "amd64"}),
            "web-2": NodeSeen(T0 + 91, 0, {"os": "debian-13", "arch": "arm64"}),
        }
    )
    stored = store.ingest_reports([wire.report_record(r) for r in reports()], now=T0 + 400)
    assert all(stored)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plumb.db"
        store = Store(f"sqlite:///{path}")
        try:
            populate(store)
        finally:
            store.close()
        with sqlite3.connect(path) as db:
            print("-- Plumb 0.1.0's store with data: made by make_store_0_1_0.py (see there).")
            for line in db.iterdump():
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
