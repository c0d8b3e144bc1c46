"""Pushing revisions: what is validated against what, who is targeted, and what refuses a push.

These run the real kinds' parsers (file, package, service) and a real SQLite
store; delivery to agents is covered by the integration tests.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.catalog import Catalog
from server.fleet import Fleet, PushOutcome
from server.pki import ROLE_SIGNER, create_ca, issue_keypair
from server.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.create(f"sqlite:///{tmp_path / 'plumb.db'}")
    store.add_token("web", "h", {"role": "web"}, created_at=0, expires_at=1e12, uses=100)
    store.add_token("db", "h", {"role": "db"}, created_at=0, expires_at=1e12, uses=100)
    yield store
    store.close()


@pytest.fixture
def fleet(store: Store) -> Fleet:
    ca = create_ca()
    return Fleet(store, issue_keypair(ca, "plumb-server", ROLE_SIGNER), clock=lambda: 1000.0)


def enroll(store: Store, name: str, role: str = "web") -> None:
    store.enroll(role, "h", name, name, now=1)


def push(fleet: Fleet, *files: tuple[str, str]) -> PushOutcome:
    return fleet.push([(name, textwrap.dedent(text)) for name, text in files])


def messages(outcome: PushOutcome) -> list[str]:
    return [str(e) for e in outcome.errors]


BASE = """\
name: base
target: {all: true}
resources:
  - kind: file
    name: etc-app
    spec: {path: /etc/app, type: directory}
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "hello\\n"}
"""

APP = """\
name: app
target: {labels: {role: web}}
resources:
  - kind: file
    name: app-conf
    spec: {path: /etc/app/app.conf, content: "port = 80\\n"}
    require: [file/etc-app]
"""


def test_a_require_into_a_stored_manifest_is_validated_with_it(fleet: Fleet, store: Store) -> None:
    enroll(store, "web-1")
    assert push(fleet, ("base.yaml", BASE)).revision == 1
    # app.yaml alone requires file/etc-app, which only the stored base.yaml declares.
    outcome = push(fleet, ("app.yaml", APP))
    assert outcome.errors == []
    assert outcome.revision == 2
    catalog = Catalog.from_json(store.catalog("web-1", 2) or b"")
    assert [r.id for r in catalog.resources] == ["file/etc-app", "file/motd", "file/app-conf"]


def test_a_require_nothing_declares_is_still_refused(fleet: Fleet) -> None:
    outcome = push(fleet, ("app.yaml", APP))
    assert outcome.revision == 0
    assert messages(outcome) == [
        "app.yaml:7: resources[0].require[0]: requires file/etc-app, which no manifest declares"
    ]


BANNER = """\
name: banner
target: {labels: {role: web}}
resources:
  - kind: file
    name: banner
    spec: {path: /etc/motd, content: "authorised use only\\n"}
"""


def test_two_manifests_managing_one_path_are_refused_naming_both(
    fleet: Fleet, store: Store
) -> None:
    enroll(store, "web-1")
    push(fleet, ("base.yaml", BASE))
    outcome = push(fleet, ("banner.yaml", BANNER))
    assert outcome.revision == 0
    assert messages(outcome) == [
        "banner.yaml:4: resources[0].spec: path /etc/motd is managed by both file/motd"
        " (base.yaml:7) and file/banner (banner.yaml:4); one real object needs one owner,"
        " both targeting node web-1"
    ]
    assert store.latest_revision_id() == 1  # nothing stored


def test_one_path_in_manifests_for_different_nodes_is_fine(fleet: Fleet, store: Store) -> None:
    enroll(store, "db-1", role="db")
    banner_for_db = BANNER.replace("role: web", "role: db")
    only_web = BASE.replace("{all: true}", "{labels: {role: web}}")
    outcome = push(fleet, ("base.yaml", only_web), ("banner.yaml", banner_for_db))
    assert outcome.errors == []


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            """\
  - {kind: package, name: nginx, spec: {package: nginx}}
  - {kind: package, name: no-nginx, spec: {package: nginx, state: absent}}
""",
            "x.yaml:5: resources[1].spec: package nginx is managed by both package/nginx"
            " (x.yaml:4) and package/no-nginx (x.yaml:5); one real object needs one owner",
        ),
        (
            """\
  - {kind: service, name: web, spec: {unit: web, content: "[Service]\\n"}}
  - {kind: file, name: unit, spec: {path: /etc/systemd/system/web.service}}
""",
            "x.yaml:5: resources[1].spec: path /etc/systemd/system/web.service is managed by"
            " both service/web (x.yaml:4) and file/unit (x.yaml:5); one real object needs one"
            " owner",
        ),
        (
            """\
  - {kind: service, name: web, spec: {unit: web.service, state: running}}
  - {kind: service, name: web-again, spec: {unit: web, enabled: true}}
""",
            "x.yaml:5: resources[1].spec: unit web.service is managed by both service/web"
            " (x.yaml:4) and service/web-again (x.yaml:5); one real object needs one owner",
        ),
        (
            """\
  - {kind: route, name: a, spec: {destination: 198.51.100.0/24, gateway: 192.0.2.1}}
  - {kind: route, name: b, spec: {destination: 198.51.100.0/24, device: eth0}}
""",
            "x.yaml:5: resources[1].spec: route 198.51.100.0/24 table 254 metric 0 is managed"
            " by both route/a (x.yaml:4) and route/b (x.yaml:5); one real object needs one owner",
        ),
        (
            """\
  - {kind: firewall, name: a, spec: {table: plumb}}
  - {kind: firewall, name: b, spec: {table: plumb, family: inet}}
""",
            "x.yaml:5: resources[1].spec: nftables table inet plumb is managed by both"
            " firewall/a (x.yaml:4) and firewall/b (x.yaml:5); one real object needs one owner",
        ),
    ],
    ids=["package-present-and-absent", "unit-file", "unit-name", "route-key", "nft-table"],
)
def test_one_object_twice_in_one_manifest_is_refused_even_with_no_node(
    fleet: Fleet, resources: str, message: str
) -> None:
    text = "name: x\ntarget: {labels: {role: nobody-yet}}\nresources:\n" + resources
    outcome = fleet.push([("x.yaml", text)])
    assert outcome.revision == 0
    assert messages(outcome) == [message]


def test_distinct_objects_of_one_kind_are_fine(fleet: Fleet) -> None:
    text = """\
name: x
target: {all: true}
resources:
  - {kind: route, name: a, spec: {destination: 198.51.100.0/24, gateway: 192.0.2.1}}
  - {kind: route, name: b, spec: {destination: 198.51.100.0/24, gateway: 192.0.2.1, metric: 5}}
  - {kind: firewall, name: a, spec: {table: plumb}}
  - {kind: firewall, name: b, spec: {table: plumb, family: ip6}}
"""
    assert fleet.push([("x.yaml", text)]).errors == []


LATE = """\
name: late
target: {names: [web-9]}
resources:
  - kind: file
    name: greeting
    spec: {path: /etc/motd, content: "welcome\\n"}
"""


def test_a_collision_only_a_later_node_makes_is_recorded_for_that_node(
    fleet: Fleet, store: Store
) -> None:
    enroll(store, "web-1")
    outcome = push(fleet, ("base.yaml", BASE), ("late.yaml", LATE))
    assert outcome.errors == []
    assert outcome.unmatched_names == ["web-9"]
    enroll(store, "web-9")

    assert fleet.prepare("web-9") is None
    assert fleet.signed_catalog("web-9") is None
    assert store.catalog_problems(outcome.revision) == {
        "web-9": [
            "late.yaml:4: resources[0].spec: path /etc/motd is managed by both file/motd"
            " (base.yaml:7) and file/greeting (late.yaml:4); one real object needs one owner,"
            " both targeting node web-9"
        ]
    }
    assert fleet.prepare("web-1") is not None  # the others keep theirs


def test_an_identical_push_changes_nothing(fleet: Fleet, store: Store) -> None:
    enroll(store, "web-1")
    first = push(fleet, ("base.yaml", BASE), ("app.yaml", APP))
    again = push(fleet, ("app.yaml", APP))
    assert (again.revision, again.unchanged, again.targeted) == (first.revision, True, [])
    assert store.latest_revision_id() == first.revision
    changed = push(fleet, ("app.yaml", APP.replace("port = 80", "port = 81")))
    assert (changed.revision, changed.unchanged) == (first.revision + 1, False)


def test_targeted_are_the_nodes_whose_catalog_changes(fleet: Fleet, store: Store) -> None:
    enroll(store, "web-1")
    enroll(store, "db-1", role="db")
    assert push(fleet, ("base.yaml", BASE), ("app.yaml", APP)).targeted == ["db-1", "web-1"]
    # Only web nodes carry app.yaml: changing it targets them alone.
    changed = push(fleet, ("app.yaml", APP.replace("port = 80", "port = 81")))
    assert changed.targeted == ["web-1"]
    # Moving it to db nodes changes both: web-1 loses it, db-1 gets it.
    moved = push(fleet, ("app.yaml", APP.replace("role: web", "role: db")))
    assert moved.targeted == ["db-1", "web-1"]


def test_names_that_match_no_node_are_reported(fleet: Fleet, store: Store) -> None:
    enroll(store, "web-1")
    text = BASE.replace("{all: true}", "{names: [web-1, web-2, db-9]}")
    outcome = push(fleet, ("base.yaml", text))
    assert outcome.unmatched_names == ["db-9", "web-2"]
    assert outcome.targeted == ["web-1"]
