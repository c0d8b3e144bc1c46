"""The store's schema, versioned: Alembic migrations over server/store.py's ``metadata``.

``metadata`` in server/store.py is the one description of the schema the code
expects. The revisions in ``versions/`` are how a store written by any earlier
release gets there, keeping its rows: ``plumb-server run`` upgrades the store
at start, ``plumb-server migrate`` does it on demand, and ``plumb-server init``
creates a new store by running them all. A store is never downgraded, and one
whose revision this code does not know (a newer Plumb wrote it) is refused.

Revisions are numbered ``0001``, ``0002``, ... in one line, no branches:

    0001  the schema of Plumb 0.1.0 (which recorded no revision: a store without
          one whose tables are exactly these is stamped 0001, then upgraded)
    0002  catalog_problems (why a node has no catalog at a revision) and
          nodes.status_revision (the revision its current status was reported
          at), filled in from each node's current report
    0003  state_losses (what agents reported losing of their own state: a
          damaged report spool set aside, a cached catalog that did not verify)
    0004  reports.sequence (the agent's numbering) with an index, and
          nodes.status_sequence and nodes.clock_offset_s (0 / unknown for the
          old rows, which then order by time as before)
    0005  nodes.conditions (what each node's agent last said is wrong with it)
    0006  nodes.revoked_at and nodes.decommissioned_at (``plumb node revoke``,
          ``plumb node rm``; NULL for the old rows: none was revoked or removed)
    0007  tokens.names, .name_pattern (the names a token allows), .reenroll
          (`plumb node reenroll`'s tokens), .revoked_at; nodes.enrolled_by_token
          (NULL for nodes enrolled before)
    0008  operators (name, role, current certificate serial, created, revoked),
          audit_log (the hash-chained audit log) with audit_head (its last entry,
          "entry 0" for the empty log), revisions.audit_id (the push's entry)

Adding a migration (say 0002, new columns on ``nodes``):

1. Change the tables in server/store.py. Nothing else describes the schema.
2. Draft the revision from the difference between ``metadata`` and head::

       PYTHONPATH=. python -m server.migrations "add nodes.retired_at"

   which writes ``versions/0002_add_nodes_retired_at.py`` (run ``ruff check
   --fix`` and ``ruff format`` on it). Read it and make it right: ALTERs go
   through ``with op.batch_alter_table("nodes") as batch:`` (SQLite alters
   little in place; batch mode copies the table, keeping every row; the
   draft does this already), a NOT NULL column added to a table with rows
   needs a ``server_default``, and data that must be transformed is moved
   with ``op.execute`` in the same migration. ``downgrade()`` stays a
   refusal. Foreign keys are not enforced while migrations run.
3. Add a line to the table above.
4. The tests tell you if you are done: tests/server/test_migrations.py
   checks that a freshly migrated store equals ``metadata`` (alembic's
   ``compare_metadata``: a table changed without a migration fails there),
   and upgrades Plumb 0.1.0's store with data in every table
   (tests/server/data/store-0.1.0.sql) through ``plumb-server migrate``,
   checking every row survives. If 0002 transforms data, assert the result
   there too.

Never edit a released revision: stores in the field have run it. The whole
upgrade, from the first pending revision to head, runs in one transaction
(server/store.py makes SQLite's DDL transactional), so a failed migration
leaves the store at the revision it had.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

SCRIPTS = Path(__file__).resolve().parent

#: The revision whose schema Plumb 0.1.0 created without recording it.
FIRST = "0001"


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built here: no alembic.ini is needed, installed or not."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    """The newest revision: the schema of server/store.py's ``metadata``."""
    heads = scripts().get_heads()
    if len(heads) != 1:  # two revisions on one parent: a mistake the tests catch
        raise RuntimeError(f"server/migrations has {len(heads)} heads: {', '.join(heads)}")
    return heads[0]


def known(revision: str) -> bool:
    return revision in {script.revision for script in scripts().walk_revisions()}


def current(conn: Connection) -> str | None:
    """The store's revision; None when it records none (new, or made by Plumb 0.1.0)."""
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: Connection, target: str = "head") -> None:
    """Run every revision after the store's up to ``target``, inside ``conn``'s transaction."""
    command.upgrade(config(conn), target)


def stamp(conn: Connection, revision: str) -> None:
    """Record ``revision`` as the store's, changing nothing else."""
    command.stamp(config(conn), revision)


def tables(conn: Connection) -> list[str]:
    """The store's tables, leaving out SQLite's own and Alembic's."""
    return [
        name
        for name in sa.inspect(conn).get_table_names()
        if name != "alembic_version" and not name.startswith("sqlite_")
    ]


def differences(conn: Connection, revision: str) -> list[str]:
    """How the tables in ``conn`` differ from those ``revision`` creates; [] if they are the same.

    The reference is made by running the revisions on a scratch in-memory
    SQLite database, so a released revision is compared with what it really
    creates, not with ``metadata`` (which later revisions change).
    """
    scratch = sa.create_engine("sqlite://")
    try:
        with scratch.begin() as reference:
            upgrade(reference, revision)
            expected = _describe(reference)
    finally:
        scratch.dispose()
    actual = _describe(conn)
    problems = []
    for table in sorted(expected.keys() | actual.keys()):
        if table not in actual:
            problems.append(f"table {table} is missing")
        elif table not in expected:
            problems.append(f"table {table} is not one of Plumb's")
        else:
            problems += [
                f"table {table}: its {aspect} differ"
                for aspect in expected[table]
                if actual[table][aspect] != expected[table][aspect]
            ]
    return problems


def _describe(conn: Connection) -> dict[str, dict[str, Any]]:
    """Each table's columns, keys, indexes and constraints, as reflection reports them."""
    inspector = sa.inspect(conn)
    return {
        table: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"), c.get("primary_key"))
                for c in inspector.get_columns(table)
            ],
            "primary key columns": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (str(i["name"]), tuple(map(str, i["column_names"])), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
            "unique constraints": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
            "foreign keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in inspector.get_foreign_keys(table)
            ),
        }
        for table in sorted(tables(conn))
    }


def draft(message: str) -> Path:
    """Write the next revision, autogenerated from what ``metadata`` has that head has not."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(f"sqlite:///{tmp}/draft.db")
        try:
            with engine.begin() as conn:
                upgrade(conn)
                script = command.revision(
                    config(conn), message, autogenerate=True, rev_id=f"{int(head()) + 1:04d}"
                )
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print('usage: python -m server.migrations "what the revision changes"', file=sys.stderr)
        return 2
    print(draft(args[0]))
    return 0
