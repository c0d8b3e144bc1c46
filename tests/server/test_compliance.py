"""Compliance never flatters: everything expected counts, whatever became of it.

Real manifests and a real SQLite store: reports go in through the ingest
path the server uses, compliance comes out of ``Fleet.compliance``.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.base import Status
from server.compliance import Tally, node_state
from server.fleet import Fleet
from server.pki import ROLE_SIGNER, create_ca, issue_keypair
from server.store import NodeSeen, ReportRecord, ResultRecord, Store

WEB = """\
name: web
target: {labels: {role: web}}
resources:
  - {kind: file, name: etc-app, spec: {path: /etc/app, type: directory}, controls: [CIS-1]}
  - kind: file
    name: app-conf
    spec: {path: /etc/app/app.conf, content: "port = 80\\n"}
    require: [file/etc-app]
    controls: [CIS-1, SOC2-CC6]
  - {kind: package, name: nginx, spec: {package: nginx}}
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.create(f"sqlite:///{tmp_path / 'plumb.db'}")
    store.add_token("t", "h", {"role": "web"}, created_at=0, expires_at=1e12, uses=10)
    for name in ("web-1", "web-2"):
        store.enroll("t", "h", name, name, now=1)
    yield store
    store.close()


@pytest.fixture
def fleet(store: Store) -> Fleet:
    signer = issue_keypair(create_ca(), "plumb-server", ROLE_SIGNER)
    fleet = Fleet(store, signer)
    assert fleet.push([("web.yaml", textwrap.dedent(WEB))]).revision == 1
    return fleet


def report(store: Store, node: str, revision: int, statuses: dict[str, Status]) -> None:
    results = [
        ResultRecord(resource_id, "web", status, [], []) for resource_id, status in statuses.items()
    ]
    record = ReportRecord(f"{node}-{revision}", node, revision, False, "push", 1, 2, results, b"")
    store.ingest_report(record, now=3)


def row(tallies: list[Tally], scope: str, name: str) -> tuple[int, int, dict[str, int]]:
    [found] = [t for t in tallies if (t.scope, t.name) == (scope, name)]
    return found.compliant, found.expected, found.ordered_counts()


ALL_GOOD = {
    "file/etc-app": Status.IN_SYNC,
    "file/app-conf": Status.REPAIRED,
    "package/nginx": Status.IN_SYNC,
}


def test_a_node_that_has_not_reported_counts_as_pending(fleet: Fleet, store: Store) -> None:
    report(store, "web-1", 1, ALL_GOOD)
    result = fleet.compliance()
    # web-2 holds the same catalog and said nothing: 3 of 6 are compliant, not 3 of 3.
    assert (result.fleet.compliant, result.fleet.expected) == (3, 6)
    assert result.fleet.percent == 50.0
    assert row(result.rows, "node", "web-2") == (0, 3, {"pending": 3})
    assert row(result.rows, "node", "web-1") == (3, 3, {"in_sync": 2, "repaired": 1})
    assert row(result.rows, "manifest", "web") == (
        3,
        6,
        {"in_sync": 2, "repaired": 1, "pending": 3},
    )


def test_skipped_and_unknown_are_not_compliant(fleet: Fleet, store: Store) -> None:
    statuses = {
        "file/etc-app": Status.FAILED,
        "file/app-conf": Status.SKIPPED,
        "package/nginx": Status.UNKNOWN,
    }
    report(store, "web-1", 1, statuses)
    report(store, "web-2", 1, ALL_GOOD)
    result = fleet.compliance()
    assert row(result.rows, "node", "web-1") == (0, 3, {"failed": 1, "skipped": 1, "unknown": 1})
    assert row(result.rows, "control", "CIS-1") == (
        2,
        4,
        {"in_sync": 1, "repaired": 1, "failed": 1, "skipped": 1},
    )
    assert row(result.rows, "control", "SOC2-CC6") == (1, 2, {"repaired": 1, "skipped": 1})
    assert row(result.rows, "kind", "package") == (1, 2, {"in_sync": 1, "unknown": 1})


def test_a_report_at_an_older_revision_says_nothing_about_the_new_one(
    fleet: Fleet, store: Store
) -> None:
    report(store, "web-1", 1, ALL_GOOD)
    report(store, "web-2", 1, ALL_GOOD)
    assert fleet.compliance().fleet.percent == 100.0
    pushed = fleet.push([("web.yaml", textwrap.dedent(WEB).replace("port = 80", "port = 81"))])
    assert pushed.revision == 2
    report(store, "web-1", 2, ALL_GOOD)
    result = fleet.compliance()
    assert result.revision == 2
    assert row(result.rows, "node", "web-2") == (0, 3, {"pending": 3})
    assert (result.fleet.compliant, result.fleet.expected) == (3, 6)


def test_a_resource_missing_from_the_report_is_unknown(fleet: Fleet, store: Store) -> None:
    report(store, "web-1", 1, {"file/etc-app": Status.IN_SYNC})
    result = fleet.compliance()
    assert row(result.rows, "node", "web-1") == (1, 3, {"in_sync": 1, "unknown": 2})


def test_a_node_without_a_catalog_counts_every_expected_resource(
    fleet: Fleet, store: Store
) -> None:
    clash = """\
name: late
target: {names: [web-3]}
resources:
  - {kind: package, name: no-nginx, spec: {package: nginx, state: absent}}
"""
    assert fleet.push([("late.yaml", clash)]).errors == []
    store.enroll("t", "h", "web-3", "web-3", now=1)
    assert fleet.prepare("web-3") is None
    result = fleet.compliance()
    assert row(result.rows, "node", "web-3") == (0, 4, {"no_catalog": 4})


def test_a_node_nothing_targets_expects_nothing(fleet: Fleet, store: Store) -> None:
    store.add_token("db", "h", {"role": "db"}, created_at=0, expires_at=1e12, uses=1)
    store.enroll("db", "h", "db-1", "db-1", now=1)
    result = fleet.compliance()
    db = result.by_node["db-1"]
    assert (db.expected, db.percent) == (0, None)
    assert result.fleet.expected == 6


# -- nodes that stopped reporting ---------------------------------------------------

ALL_IN_SYNC = {
    "file/etc-app": Status.IN_SYNC,
    "file/app-conf": Status.IN_SYNC,
    "package/nginx": Status.IN_SYNC,
}


def test_a_node_silent_for_three_of_its_run_intervals_is_no_report_never_compliant(
    store: Store, fleet: Fleet
) -> None:
    # Both ran revision 1 at t=2 (their clocks agree with ours); both run every 60 s.
    for node in ("web-1", "web-2"):
        report(store, node, 1, ALL_IN_SYNC)
    store.nodes_seen({n: NodeSeen(5.0, run_interval_s=60.0) for n in ("web-1", "web-2")})
    fleet.clock = lambda: 2 + 3 * 60  # exactly three intervals: not yet
    assert fleet.compliance().fleet.ordered_counts() == {"in_sync": 6}
    # web-2 runs again at t=151 (a periodic run); web-1 stays silent.
    store.ingest_report(
        ReportRecord(
            "web-2-late",
            "web-2",
            1,
            False,
            "schedule",
            150,
            151,
            [ResultRecord(r, "web", Status.IN_SYNC, [], []) for r in ALL_IN_SYNC],
            b"",
            sequence=9,
        ),
        now=152,
    )
    fleet.clock = lambda: 2 + 3 * 60 + 1  # web-1 is past three intervals; web-2 reported at 151
    result = fleet.compliance()
    assert result.by_node["web-1"].ordered_counts() == {"no_report": 3}
    assert result.by_node["web-2"].ordered_counts() == {"in_sync": 3}
    assert result.fleet.compliant == 3 and result.fleet.expected == 6
    nodes = {n.name: n for n in store.list_nodes()}
    assert node_state(nodes["web-1"], True, 1, 183.0) == "no_report"
    assert node_state(nodes["web-2"], True, 1, 183.0) == "connected"
    assert node_state(nodes["web-2"], False, 2, 183.0) == "pending"


def test_an_agent_that_does_not_run_by_itself_or_did_not_say_is_never_silent(
    store: Store, fleet: Fleet
) -> None:
    report(store, "web-1", 1, ALL_IN_SYNC)
    store.nodes_seen({"web-1": NodeSeen(5.0, run_interval_s=0.0)})  # one-shot runs only
    fleet.clock = lambda: 1e9
    result = fleet.compliance()
    assert result.by_node["web-1"].ordered_counts() == {"in_sync": 3}  # not said: not silent
    assert result.by_node["web-2"].ordered_counts() == {"pending": 3}  # never said anything


def test_a_node_that_never_reported_is_counted_from_its_enrollment(
    store: Store, fleet: Fleet
) -> None:
    store.nodes_seen({"web-1": NodeSeen(5.0, run_interval_s=10.0)})
    fleet.clock = lambda: 1 + 30  # enrolled at 1: three intervals, not more
    assert fleet.compliance().by_node["web-1"].ordered_counts() == {"pending": 3}
    fleet.clock = lambda: 1 + 31
    assert fleet.compliance().by_node["web-1"].ordered_counts() == {"no_report": 3}


# -- waivers --------------------------------------------------------------------------

FAILING = {
    "file/etc-app": Status.IN_SYNC,
    "file/app-conf": Status.FAILED,  # controls CIS-1 and SOC2-CC6
    "package/nginx": Status.DRIFTED,
}


def test_a_waiver_shows_failures_as_waived_scored_with_and_without_it(
    store: Store, fleet: Fleet
) -> None:
    for node in ("web-1", "web-2"):
        report(store, node, 1, FAILING)
    fleet.clock = lambda: 100.0
    waiver = fleet.add_waiver("SOC2-CC6", None, "name=web-1", "legacy app", 200.0, "alice")
    assert (waiver.id, waiver.approver, waiver.created_at) == (1, "alice", 100.0)
    result = fleet.compliance()
    assert result.by_node["web-1"].ordered_counts() == {"in_sync": 1, "drifted": 1, "waived": 1}
    assert result.by_node["web-2"].ordered_counts() == {"in_sync": 1, "drifted": 1, "failed": 1}
    assert result.fleet.percent == pytest.approx(100 * 2 / 6)
    assert result.fleet.percent_with_waivers == pytest.approx(100 * 3 / 6)
    by_control = {t.name: t for t in result.rows if t.scope == "control"}
    assert by_control["CIS-1"].ordered_counts() == {"in_sync": 2, "waived": 1, "failed": 1}

    # Expired: a failure again, at that very moment, without anything else happening.
    fleet.clock = lambda: 200.0
    assert fleet.compliance().by_node["web-1"].ordered_counts() == {
        "in_sync": 1,
        "failed": 1,
        "drifted": 1,
    }


def test_a_revoked_waiver_covers_nothing_and_a_resource_waiver_only_its_resource(
    store: Store, fleet: Fleet
) -> None:
    report(store, "web-1", 1, FAILING)
    fleet.clock = lambda: 100.0
    fleet.add_waiver(None, "package/nginx", None, "upstream bug", 1e9, "alice")
    assert fleet.compliance().by_node["web-1"].ordered_counts() == {
        "in_sync": 1,
        "failed": 1,
        "waived": 1,
    }
    assert store.revoke_waiver(1, 150.0) is not None
    assert "waived" not in fleet.compliance().by_node["web-1"].ordered_counts()
    again = store.revoke_waiver(1, 160.0)
    assert again is not None and again.revoked_at == 150.0 and again.state(160.0) == "revoked"
    assert store.revoke_waiver(99, 160.0) is None


def test_a_waiver_never_hides_a_node_that_did_not_report(store: Store, fleet: Fleet) -> None:
    fleet.clock = lambda: 100.0
    fleet.add_waiver("CIS-1", None, None, "n/a here", 1e9, "alice")
    assert fleet.compliance().by_node["web-2"].ordered_counts() == {"pending": 3}


@pytest.mark.parametrize(
    ("control", "resource", "target", "reason", "expires", "message"),
    [
        ("CIS-9", None, None, "r", 1e9, "no resource of revision 1 has the control 'CIS-9'"),
        (None, "file/nope", None, "r", 1e9, "revision 1 has no resource 'file/nope'"),
        (None, None, None, "r", 1e9, "a waiver names a control (--control) or a resource"),
        ("CIS-1", "file/app-conf", None, "r", 1e9, "a waiver names a control"),
        ("CIS-1", None, None, " ", 1e9, "a waiver says why"),
        ("CIS-1", None, None, "r", 50.0, "a waiver expires in the future"),
        ("CIS-1", None, "role in (web", "r", 1e9, "cannot read it at column"),
    ],
)
def test_a_waiver_of_nothing_or_without_reason_or_future_is_refused(
    fleet: Fleet,
    store: Store,
    control: str | None,
    resource: str | None,
    target: str | None,
    reason: str,
    expires: float,
    message: str,
) -> None:
    fleet.clock = lambda: 100.0
    with pytest.raises(ValueError, match=re.escape(message)):
        fleet.add_waiver(control, resource, target, reason, expires, "alice")
    assert store.waivers() == []
