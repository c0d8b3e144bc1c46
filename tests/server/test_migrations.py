"""The store's schema is versioned: the revisions, the upgrade of a 0.1.0 store, the refusals.

The commands are run as the operator runs them (``plumb-server init``,
``migrate``, ``run`` as processes), on data dirs the tests make; the 0.1.0
store is a dump of the real thing with rows in every table
(tests/server/data/store-0.1.0.sql).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from modules.base import Status
from protos import plumb_pb2 as pb
from server import audit, migrations, wire
from server import main as server_main
from server.errors import StoreError
from server.store import StateLossRow, Store, metadata, migrate
from tests.integration.harness import command
from tests.server.data import TABLES_0_1_0, columns, load_store_0_1_0, rows

T0 = 1_700_000_000.0  # the fixture's clock (make_store_0_1_0.py)
# The revision of each node's newest report in the fixture (web-1 has one at 1, then at 2).
STATUS_REVISIONS = {"web-1": 2, "web-2": 2, "db-1": 2}


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def plumb_server(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("server.main"), "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir as `plumb-server init` makes it; tests work on copies."""
    data = tmp_path_factory.mktemp("init") / "server"
    loopback = ["--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0"]
    result = plumb_server(data, "init", "--san", "localhost", *loopback)
    assert result.returncode == 0, result.stderr
    return data


@pytest.fixture
def data_dir(initialised: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(initialised, tmp_path / "server"))


def revision_of(path: Path) -> str | None:
    engine = sa.create_engine(url(path))
    try:
        with engine.connect() as conn:
            return migrations.current(conn)
    finally:
        engine.dispose()


# ------------------------------------------------------------ the revisions


def test_a_migrated_store_has_exactly_the_schema_of_store_metadata(tmp_path: Path) -> None:
    """A table changed in server/store.py without a migration fails here."""
    store = Store.create(url(tmp_path / "plumb.db"))
    try:
        with store.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, metadata) == []
    finally:
        store.close()


def test_the_revisions_are_one_numbered_line_and_never_downgrade() -> None:
    scripts = list(reversed(list(migrations.scripts().walk_revisions())))
    numbers = [s.revision for s in scripts]
    assert numbers == [f"{i:04d}" for i in range(1, len(scripts) + 1)]
    assert [s.down_revision for s in scripts] == [None, *numbers[:-1]]
    assert migrations.head() == numbers[-1]
    for script in scripts:
        assert Path(script.path).name.startswith(f"{script.revision}_")
        with pytest.raises(NotImplementedError, match="never downgraded"):
            script.module.downgrade()


def test_revision_0001_creates_what_plumb_0_1_0_created(tmp_path: Path) -> None:
    path = load_store_0_1_0(tmp_path / "plumb.db")
    engine = sa.create_engine(url(path))
    try:
        with engine.connect() as conn:
            assert sorted(migrations.tables(conn)) == list(TABLES_0_1_0)
            assert migrations.differences(conn, "0001") == []
            # ... and the comparison does see a difference when there is one.
            conn.exec_driver_sql("DROP INDEX ix_reports_node")
            assert migrations.differences(conn, "0001") == ["table reports: its indexes differ"]
    finally:
        engine.dispose()


# ------------------------------------------------------------ creating, opening


def test_init_creates_the_store_at_head(initialised: Path) -> None:
    assert revision_of(initialised / "plumb.db") == migrations.head()


def test_create_never_replaces_a_store(tmp_path: Path) -> None:
    path = load_store_0_1_0(tmp_path / "plumb.db")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="already exists: a store is never replaced"):
        Store.create(url(path))
    assert path.read_bytes() == before


def test_a_store_not_at_head_is_not_opened_without_migrating(tmp_path: Path) -> None:
    path = load_store_0_1_0(tmp_path / "plumb.db")
    with pytest.raises(StoreError, match=r"run 'plumb-server migrate'"):
        Store(url(path))


def test_init_refuses_postgresql_before_writing_anything(tmp_path: Path) -> None:
    data = tmp_path / "server"
    result = plumb_server(data, "init", "--store-url", "postgresql://plumb@db.example/plumb")
    assert result.returncode == 1
    assert result.stderr == (
        "plumb-server: PostgreSQL is not supported yet (only the embedded SQLite store): "
        "leave store_url empty, or set it to sqlite:///PATH\n"
    )
    assert not data.exists()


# ------------------------------------------------------------ upgrading a 0.1.0 store


def test_migrate_upgrades_a_0_1_0_store_and_keeps_every_row(data_dir: Path) -> None:
    path = load_store_0_1_0(data_dir / "plumb.db")
    old_columns = columns(path)
    before = rows(path, old_columns)
    assert all(before[table] for table in TABLES_0_1_0), "the fixture has rows in every table"

    done = plumb_server(data_dir, "migrate", "--json")
    assert done.returncode == 0, done.stderr
    # 0008: the data dir's operator certificate (an older init's one operator)
    # is an admin now, said on stderr; stdout stays the JSON.
    assert "is now admin operator 'admin'" in done.stderr
    head = migrations.head()
    assert json.loads(done.stdout) == {
        "store": str(path),
        "from": None,
        "to": head,
        "migrated": True,
    }
    assert rows(path, old_columns) == before

    again = plumb_server(data_dir, "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"plumb-server: store already at head ({head}): {path}\n"

    store = Store(url(path))
    try:
        check_0_1_0_data(store)
    finally:
        store.close()


def check_0_1_0_data(store: Store) -> None:
    """What the 0.1.0 fixture holds, read back through the Store API, which still writes."""
    assert [(n.name, n.labels, n.applied_revision) for n in store.list_nodes()] == [
        ("db-1", {"role": "db"}, 2),
        ("web-1", {"role": "web"}, 2),
        ("web-2", {"role": "web"}, 0),
    ]
    assert store.latest_revision_id() == 2
    assert [m.name for m in store.revision(1)] == ["web"]
    second = {m.name: m for m in store.revision(2)}
    assert sorted(second) == ["db", "web"]
    assert second["web"].file == "web.yaml" and "workers = 8" in second["web"].source
    catalog = json.loads(store.catalog("web-1", 2) or b"{}")
    assert (catalog["node"], catalog["revision"]) == ("web-1", 2)
    assert [r["spec"]["path"] for r in catalog["resources"]] == ["/etc/motd", "/etc/app.conf"]
    assert store.count_reports() == 4
    report = pb.Report.FromString(store.last_report("web-1") or b"")
    assert report.id == "web-1-0002"
    assert report.results[1].error == "open /etc/app.conf: permission denied"
    assert dict(report.results[0].observed) == {"mode": "0666"}
    drift = store.drift()
    assert [(d.node, d.resource_id, d.status) for d in drift] == [
        ("db-1", "file/pg-conf", Status.DRIFTED),
        ("web-2", "file/motd", Status.DRIFTED),
        ("web-1", "file/motd", Status.REPAIRED),
    ]
    assert drift[2].changes == [{"field": "mode", "observed": "0666", "desired": "0644"}]
    statuses = {(s.node, s.resource_id): s.status for s in store.statuses()}
    assert statuses[("web-1", "file/motd")] == Status.REPAIRED
    assert statuses[("web-1", "file/app-conf")] == Status.FAILED
    assert statuses[("web-2", "file/motd")] == Status.DRIFTED
    # 0002: each node's status knows the revision it was reported at.
    assert {n.name: n.status_revision for n in store.list_nodes()} == STATUS_REVISIONS
    assert store.catalog_problems(2) == {}
    # 0003: no node has reported a loss yet; the table takes them.
    assert store.state_losses() == {}
    loss = StateLossRow("web-1", "l1", "spooled_reports", None, T0 + 400, "spool.db was damaged")
    assert store.record_state_losses([loss], now=T0 + 401) == ["l1"]
    assert store.state_losses() == {"web-1": [dataclasses.replace(loss, received_at=T0 + 401)]}
    # 0007: the fixture's tokens are as they were (bound to no name, no
    # re-enroll, not revoked), and its nodes have no token recorded: none was.
    old_tokens = store.list_tokens(now=T0, include_all=True)
    assert [(t.id, t.uses_left, t.state(T0 + 100)) for t in old_tokens] == [
        ("0a1b2c3d", 1, "valid"),
        ("4e5f6a7b", 0, "used_up"),
        ("8c9d0e1f", 5, "expired"),
    ]
    assert {(t.binding.bound, t.reenroll, t.revoked_at) for t in old_tokens} == {
        (False, False, None)
    }
    assert {n.enrolled_by_token for n in store.list_nodes()} == {None}
    # The token of the fixture has one use left: the store takes new rows too.
    assert store.enroll("0a1b2c3d", "5" * 64, "web-3", "0b0b0b", now=T0 + 500) == {"role": "web"}
    assert getattr(store.node("web-3"), "enrolled_by_token", None) == "0a1b2c3d"
    fresh = pb.Report(id="web-3-0001", node_name="web-3", revision=2, finished_at=T0 + 501)
    assert store.ingest_report(wire.report_record(fresh), now=T0 + 502)
    # 0006: no node of 0.1.0 is revoked or removed; each can be, and keeps its history.
    assert {(n.revoked_at, n.decommissioned_at) for n in store.list_nodes()} == {(None, None)}
    assert not store.decommission_node("web-2", now=T0 + 600).already
    assert [n.name for n in store.list_nodes()] == ["db-1", "web-1", "web-3"]
    assert store.count_reports("web-2") > 0
    # 0008: the migrated store keeps operators and an intact audit log (the
    # adopted operator's entry first), and pushes from before have no entry.
    assert [(o.name, o.role) for o in store.list_operators()] == [("admin", "admin")]
    assert store.verify_audit().intact
    assert store.revision_audit_id(2) is None
    recorded = store.audit(audit.Entry(audit.Actor.local(), "local", "Test", {}), T0 + 700)
    assert (recorded.id, store.verify_audit().entries) == (2, 2)


# ------------------------------------------------------------ a migration after head

NEXT = f"{int(migrations.head()) + 1:04d}"


@pytest.fixture
def with_next_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], None]]:
    """The real revisions plus one after head (NEXT) whose upgrade() is the given source."""

    def add(upgrade: str) -> None:
        copy = tmp_path / "migrations"
        shutil.copytree(migrations.SCRIPTS, copy, ignore=shutil.ignore_patterns("__pycache__"))
        (copy / "versions" / f"{NEXT}_test.py").write_text(
            "import sqlalchemy as sa\n"
            "from alembic import op\n\n"
            f"revision = {NEXT!r}\n"
            f"down_revision = {migrations.head()!r}\n\n\n" + upgrade
        )
        monkeypatch.setattr(migrations, "SCRIPTS", copy)
        migrations.scripts.cache_clear()

    yield add
    migrations.scripts.cache_clear()


def test_a_batch_migration_of_a_0_1_0_store_keeps_every_row(
    tmp_path: Path, with_next_revision: Callable[[str], None]
) -> None:
    """The way revisions ALTER a table on SQLite: rebuilt, rows and all."""
    with_next_revision(
        "def upgrade() -> None:\n"
        '    with op.batch_alter_table("nodes") as batch:\n'
        '        batch.add_column(sa.Column("test_only", sa.Float(), nullable=True))\n'
        '        batch.alter_column("cert_serial", type_=sa.String(99), existing_nullable=False)\n'
    )
    path = load_store_0_1_0(tmp_path / "plumb.db")
    old_columns = columns(path)
    before = rows(path, old_columns)
    done = migrate(url(path))
    assert (done.from_revision, done.to_revision) == (None, NEXT)
    assert rows(path, old_columns) == before
    assert rows(path, {"nodes": ["test_only"]}) == {"nodes": [(None,), (None,), (None,)]}


def test_a_failed_migration_leaves_the_store_as_it_was(
    tmp_path: Path, with_next_revision: Callable[[str], None]
) -> None:
    with_next_revision(
        "def upgrade() -> None:\n"
        '    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))\n'
        '    with op.batch_alter_table("nodes") as batch:\n'
        '        batch.add_column(sa.Column("test_only", sa.Float(), nullable=True))\n'
        '    op.execute("INSERT INTO nowhere VALUES (1)")\n'
    )
    path = load_store_0_1_0(tmp_path / "plumb.db")
    old_columns = columns(path)
    before = rows(path, old_columns)
    with pytest.raises(StoreError, match=f"migrating the store {path} failed: no such table"):
        migrate(url(path))
    # Not even the 0001 stamp: the stamp and every revision up to the broken
    # one (its table, its ALTER) were one transaction.
    db = sqlite3.connect(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()
    assert tables == set(TABLES_0_1_0)
    assert columns(path) == old_columns
    assert rows(path, old_columns) == before


# ------------------------------------------------------------ refusals


def _missing(path: Path) -> None:
    path.unlink()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def _damaged(path: Path) -> None:
    """The 0.1.0 store with the first bytes of its nodes table's page overwritten."""
    load_store_0_1_0(path)
    db = sqlite3.connect(path)
    try:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name='nodes'").fetchone()
        (page,) = db.execute("PRAGMA page_size").fetchone()
    finally:
        db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page + 8)  # past the page header: its cell pointers
        f.write(b"\x07" * 64)


def _truncated(path: Path) -> None:
    load_store_0_1_0(path)
    with path.open("r+b") as f:
        f.truncate(3 * 4096)


def _newer(path: Path) -> None:
    """A store a newer Plumb has migrated past this one's head."""
    db = sqlite3.connect(path)
    try:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
        db.commit()
    finally:
        db.close()


def _not_plumbs(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO customers (name) VALUES ('acme')")
        db.commit()
    finally:
        db.close()


def _no_tables(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA user_version = 7")  # a valid SQLite file, with nothing in it
    finally:
        db.close()


def _postgresql(path: Path) -> None:
    config = path.parent / "server.toml"
    text = config.read_text().replace('store_url = ""', 'store_url = "postgresql://db/plumb"')
    config.write_text(text)


RECOVERY = "restore plumb.db from a backup, or start afresh with 'plumb-server init --data-dir"
REFUSALS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (_missing, f"is missing: {RECOVERY}"),
    "empty": (_empty, f"is empty (0 bytes): {RECOVERY}"),
    "garbage": (_garbage, "is damaged or not a SQLite database (file is not a database)"),
    "damaged": (_damaged, "is damaged, PRAGMA quick_check found: On tree page"),
    "truncated": (_truncated, "is damaged"),
    "newer": (_newer, "is at schema revision 9999, which this plumb-server does not know"),
    "not plumb's": (_not_plumbs, "its tables are not Plumb 0.1.0's (table catalogs is missing"),
    "no tables": (_no_tables, f"has no tables: {RECOVERY}"),
    "postgresql": (_postgresql, "PostgreSQL is not supported yet (only the embedded SQLite store)"),
}


def _refused(data_dir: Path, case: str, run: Callable[[], tuple[int, str, str]]) -> None:
    """``run`` the command on the store prepared for ``case``: refused, in one line, untouched."""
    path = data_dir / "plumb.db"
    prepare, expected = REFUSALS[case]
    prepare(path)
    before = path.read_bytes() if path.exists() else None
    code, out, err = run()
    assert code == 1, out + err
    assert "listening" not in out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("plumb-server: "), err  # no traceback
    assert expected in lines[0]
    assert (path.read_bytes() if path.exists() else None) == before


@pytest.mark.parametrize("case", list(REFUSALS))
def test_run_refuses_a_store_it_cannot_use(data_dir: Path, case: str) -> None:
    def run() -> tuple[int, str, str]:
        # On a store it took, the server would listen until the timeout.
        result = plumb_server(data_dir, "run")
        return result.returncode, result.stdout, result.stderr

    _refused(data_dir, case, run)


@pytest.mark.parametrize("case", list(REFUSALS))
def test_migrate_refuses_a_store_it_cannot_use(
    data_dir: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def run() -> tuple[int, str, str]:
        # In this process, to save a start per case; `run` above is the real process.
        code = server_main.main(["--data-dir", str(data_dir), "migrate"])
        out, err = capsys.readouterr()
        return code, out, err

    _refused(data_dir, case, run)


def test_the_head_read_from_file_names_is_alembic_s_head() -> None:
    from server.store import head_on_disk

    assert head_on_disk() == migrations.head()


def test_a_store_at_head_starts_without_loading_alembic(initialised: Path, tmp_path: Path) -> None:
    # A start should not pay for Alembic's imports when there is nothing to migrate.
    store = url(shutil.copytree(initialised, tmp_path / "server") / "plumb.db")
    code = (
        "import sys; from server.store import Store, migrate; "
        f"m = migrate({store!r}); Store({store!r}).close(); "
        "print(not m.changed, 'alembic' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["True", "False"]
