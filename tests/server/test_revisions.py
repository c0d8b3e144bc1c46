"""Revisions over time: remove (and purge), roll back, history, diff, and
catalogs that follow what selects a node. Real kinds' parsers, a real SQLite store."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.catalog import Catalog
from server.fleet import Fleet
from server.pki import ROLE_SIGNER, create_ca, issue_keypair
from server.store import RevisionMeta, Store

APP = textwrap.dedent("""\
    name: app
    target: {labels: {role: web}}
    resources:
      - kind: file
        name: app-dir
        spec: {path: /etc/app, type: directory}
      - kind: file
        name: app-conf
        spec: {path: /etc/app/app.conf, content: "port = 80\\n"}
        require: [file/app-dir]
      - kind: service
        name: app
        spec: {unit: app.service}
      - kind: file
        name: token
        spec: {path: /etc/app/token, content: "s3cr3t\\n"}
        sensitive: true
    """)

DEBIAN_ONLY = textwrap.dedent("""\
    name: apt
    target: "os.family=debian"
    resources:
      - {kind: package, name: unattended, spec: {package: unattended-upgrades}}
    """)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.create(f"sqlite:///{tmp_path / 'plumb.db'}")
    store.add_token("web", "h", {"role": "web"}, created_at=0, expires_at=1e12, uses=100)
    store.enroll("web", "h", "web-1", "web-1", now=1)
    store.enroll("web", "h", "web-2", "web-2", now=1)
    yield store
    store.close()


@pytest.fixture
def fleet(store: Store) -> Fleet:
    ca = create_ca()
    return Fleet(store, issue_keypair(ca, "plumb-server", ROLE_SIGNER), clock=lambda: 1000.0)


def catalog(store: Store, node: str, revision: int) -> dict[str, dict[str, object]]:
    found = Catalog.from_json(store.catalog(node, revision) or b"")
    return {r.id: dict(r.spec) for r in found.resources}


def test_a_revision_records_author_message_and_content_hash(fleet: Fleet, store: Store) -> None:
    meta = RevisionMeta(author="alice", message="first app")
    assert fleet.push([("app.yaml", APP)], meta).revision == 1
    row = store.revision_row(1)
    assert row is not None
    assert (row.author, row.message, row.origin) == ("alice", "first app", "push")
    assert len(row.content_sha256) == 64
    # The same content again makes no revision.
    again = fleet.push([("app.yaml", APP)], RevisionMeta(author="bob"))
    assert again.unchanged and again.revision == 1


def test_remove_without_purge_leaves_the_objects_unmanaged(fleet: Fleet, store: Store) -> None:
    fleet.push([("app.yaml", APP)])
    outcome = fleet.remove("app", purge=False)
    assert outcome.errors == [] and outcome.revision == 2
    assert catalog(store, "web-1", 2) == {}
    assert sorted(outcome.released) == [
        "file/app-conf",
        "file/app-dir",
        "file/token",
        "service/app",
    ]
    assert outcome.released["file/app-conf"] == ["web-1", "web-2"]
    assert outcome.purging == {}
    assert store.revision_row(2).origin == "remove"  # type: ignore[union-attr]


def test_purge_removes_what_can_be_removed_and_releases_the_rest(
    fleet: Fleet, store: Store
) -> None:
    fleet.push([("app.yaml", APP)])
    outcome = fleet.remove("app", purge=True)
    assert outcome.errors == []
    removals = catalog(store, "web-1", 2)
    assert removals == {
        "file/app-dir": {"path": "/etc/app", "state": "absent"},
        "file/app-conf": {"path": "/etc/app/app.conf", "state": "absent"},
        "file/token": {"path": "/etc/app/token", "state": "absent"},
    }
    # The file goes before its directory: the removal of what it required waits for it.
    resources = {r.id: r for r in Catalog.from_json(store.catalog("web-1", 2) or b"").resources}
    assert resources["file/app-dir"].require == ("file/app-conf",)
    assert sorted(outcome.purging) == ["file/app-conf", "file/app-dir", "file/token"]
    assert list(outcome.released) == ["service/app"]  # a service is not removed
    # A later push carries the purge on; pushing the name again ends it.
    other = "name: other\ntarget: {all: true}\nresources: []\n"
    assert fleet.push([("other.yaml", other)]).revision == 3
    assert "file/app-dir" in catalog(store, "web-1", 3)
    assert fleet.push([("app.yaml", APP)]).revision == 4
    assert catalog(store, "web-1", 4)["file/app-dir"] == {"path": "/etc/app", "type": "directory"}


def test_a_purged_object_a_live_manifest_manages_is_not_removed(fleet: Fleet, store: Store) -> None:
    fleet.push([("app.yaml", APP)])
    fleet.remove("app", purge=True)
    keeper = textwrap.dedent("""\
        name: keeper
        target: {all: true}
        resources:
          - {kind: file, name: etc-app, spec: {path: /etc/app, type: directory}}
        """)
    assert fleet.push([("keeper.yaml", keeper)]).errors == []
    found = catalog(store, "web-1", 3)
    assert found["file/etc-app"] == {"path": "/etc/app", "type": "directory"}
    assert "file/app-dir" not in found and "file/app-conf" in found


def test_removing_an_unknown_manifest_is_refused(fleet: Fleet) -> None:
    outcome = fleet.remove("nope", purge=False)
    assert outcome.revision == 0
    assert "no manifest is named 'nope'" in str(outcome.errors[0])


def test_rollback_restores_the_old_content_in_a_new_revision(fleet: Fleet, store: Store) -> None:
    fleet.push([("app.yaml", APP)])
    fleet.push([("app.yaml", APP.replace("port = 80", "port = 81"))])
    outcome = fleet.rollback(1, meta=RevisionMeta(author="alice", origin="rollback"))
    assert outcome.errors == [] and outcome.revision == 3
    assert catalog(store, "web-1", 3) == catalog(store, "web-1", 1)
    row1, row3 = store.revision_row(1), store.revision_row(3)
    assert row1 is not None and row3 is not None
    assert row3.content_sha256 == row1.content_sha256 and row3.origin == "rollback"
    assert fleet.rollback(3).unchanged
    assert "there is no revision 9" in str(fleet.rollback(9).errors[0])


def test_rollback_of_one_manifest_keeps_the_others(fleet: Fleet, store: Store) -> None:
    base = (
        "name: base\ntarget: {all: true}\nresources:\n  - {kind: file, name: m, spec: {path: /m}}\n"
    )
    fleet.push([("app.yaml", APP), ("base.yaml", base)])
    fleet.push([("base.yaml", base.replace("/m", "/n"))])
    fleet.push([("app.yaml", APP.replace("port = 80", "port = 82"))])
    assert fleet.rollback(1, "app").revision == 4
    found = catalog(store, "web-1", 4)
    assert found["file/app-conf"]["content"] == "port = 80\n"
    assert found["file/m"] == {"path": "/n"}


def test_history_lists_what_each_revision_changed(fleet: Fleet) -> None:
    fleet.push([("app.yaml", APP)], RevisionMeta(author="alice", message="app"))
    fleet.push([("apt.yaml", DEBIAN_ONLY)], RevisionMeta(author="bob"))
    fleet.remove("app", purge=True, meta=RevisionMeta(author="carol", origin="remove"))
    changes = fleet.history(10)
    assert [(c.row.id, c.row.author) for c in changes] == [(3, "carol"), (2, "bob"), (1, "alice")]
    assert changes[0].purged == ("app",) and changes[0].removed == ()
    assert changes[1].added == ("apt",) and changes[2].added == ("app",)
    assert [c.row.id for c in fleet.history(10, "app")] == [3, 1]


def test_diff_shows_text_and_which_nodes_change_but_never_a_secret(fleet: Fleet) -> None:
    fleet.push([("app.yaml", APP)])
    changed = APP.replace("port = 80", "port = 81").replace("s3cr3t", "t0psecret")
    fleet.push([("app.yaml", changed)])
    texts, resources = fleet.diff(1, 2)
    [text] = texts
    unified = text.unified()
    assert '-    spec: {path: /etc/app/app.conf, content: "port = 80\\n"}' in unified
    assert "s3cr3t" not in unified and "t0psecret" not in unified
    assert [(r.resource_id, r.change, r.fields, r.nodes) for r in resources] == [
        ("file/app-conf", "changed", ("content",), ("web-1", "web-2")),
        ("file/token", "changed", ("content",), ("web-1", "web-2")),
    ]


def test_a_node_whose_facts_now_select_other_manifests_is_compiled_again(
    fleet: Fleet, store: Store
) -> None:
    assert fleet.push([("apt.yaml", DEBIAN_ONLY)]).targeted == []
    assert fleet.prepare("web-1") is not None
    assert catalog(store, "web-1", 1) == {}
    found = fleet.prepare("web-1", {"os.family": "debian"})
    assert found is not None
    assert catalog(store, "web-1", 1) == {"package/unattended": {"package": "unattended-upgrades"}}
    # Unchanged facts: the stored catalog is used as it is.
    assert fleet.prepare("web-1", {"os.family": "debian"}) == found
