"""The store on SQLite: tokens, idempotent ingest, current status and compliance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.base import Status
from server import tokens
from server.errors import NodeExists, TokenRefused, UnknownNode
from server.store import NodeCredential, ReportRecord, ResultRecord, StateLossRow, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.create(f"sqlite:///{tmp_path / 'plumb.db'}")
    store.add_token("t1", "h", {"role": "web"}, created_at=0, expires_at=100, uses=2)
    store.enroll("t1", "h", "web-1", "01", now=1)
    yield store
    store.close()  # and its WAL checkpointing thread


def _report(
    report_id: str, finished: float, *statuses: Status, drift: bool = True, noop: bool = False
) -> ReportRecord:
    results = [
        ResultRecord(
            f"file/{i}",
            "web",
            s,
            [{"field": "content", "observed": "a", "desired": "b"}],
            ["CIS-1"],
            drift,
        )
        for i, s in enumerate(statuses)
    ]
    return ReportRecord(
        report_id, "web-1", 3, noop, "schedule", finished - 1, finished, results, b""
    )


def test_enroll_spends_token_uses(store: Store) -> None:
    assert store.enroll("t1", "h", "web-2", "02", now=2) == {"role": "web"}
    with pytest.raises(TokenRefused, match="used up"):
        store.enroll("t1", "h", "web-3", "03", now=3)
    assert [n.name for n in store.list_nodes()] == ["web-1", "web-2"]


@pytest.mark.parametrize(
    ("token_id", "secret", "now", "message"),
    [
        ("nope", "h", 1, "unknown token"),
        ("t1", "wrong", 1, "unknown token"),
        ("t1", "h", 100, "expired"),
    ],
)
def test_enroll_refusals(
    store: Store, token_id: str, secret: str, now: float, message: str
) -> None:
    with pytest.raises(TokenRefused, match=message):
        store.enroll(token_id, secret, "web-9", "09", now=now)
    assert store.node("web-9") is None


def test_enrolling_an_existing_name_is_refused(store: Store) -> None:
    with pytest.raises(NodeExists):
        store.enroll("t1", "h", "web-1", "04", now=2)


def test_a_bound_token_enrolls_only_names_it_allows(store: Store) -> None:
    store.add_token("t2", "h", {}, 0, 100, 5, tokens.binding(["db-2"], None))
    store.add_token("t3", "h", {}, 0, 100, 5, tokens.binding(None, "web-*"))
    for token_id, name in (("t2", "db-3"), ("t3", "db-2")):
        with pytest.raises(TokenRefused, match=f"token {token_id} allows only"):
            store.check_enrollment(token_id, "h", name, now=1)
        with pytest.raises(TokenRefused, match=f"token {token_id} allows only"):
            store.enroll(token_id, "h", name, "0a", now=1)
    store.enroll("t2", "h", "db-2", "0b", now=1)
    store.enroll("t3", "h", "web-7", "0c", now=1)
    left = {t.id: t.uses_left for t in store.list_tokens(now=1)}
    assert left == {"t1": 1, "t2": 4, "t3": 4}  # refusals spent nothing


def test_only_a_reenroll_token_replaces_an_enrolled_node_and_its_serial(store: Store) -> None:
    store.add_token("bound", "h", {"role": "other"}, 0, 100, 5, tokens.binding(["web-1"], None))
    with pytest.raises(NodeExists, match="plumb node reenroll web-1"):
        store.check_enrollment("bound", "h", "web-1", now=1)
    with pytest.raises(NodeExists):
        store.enroll("bound", "h", "web-1", "ff", now=1)
    store.add_token("re", "h", {}, 0, 100, 1, tokens.binding(["web-1"], None), reenroll=True)
    assert store.check_enrollment("re", "h", "web-1", now=1).reenroll
    assert store.enroll("re", "h", "web-1", "ff", now=5) == {"role": "web"}  # its labels kept
    node = store.node("web-1")
    assert node is not None
    assert (node.cert_serial, node.enrolled_by_token, node.enrolled_at) == ("ff", "re", 5)
    with pytest.raises(TokenRefused, match="used up"):
        store.enroll("re", "h", "web-1", "fe", now=6)
    assert [n.name for n in store.list_nodes()] == ["web-1"]


def test_revoked_tokens_enroll_nothing_and_stay_listed_with_all(store: Store) -> None:
    revoked = store.revoke_token("t1", now=7)
    assert revoked is not None
    token, now = revoked
    assert (token.revoked_at, token.state(8), now) == (7, "revoked", True)
    again = store.revoke_token("t1", now=9)
    assert again is not None and (again[0].revoked_at, again[1]) == (7, False)
    assert store.revoke_token("nope", now=9) is None
    with pytest.raises(TokenRefused, match="token t1 has been revoked"):
        store.check_enrollment("t1", "h", "web-2", now=8)
    with pytest.raises(TokenRefused, match="token t1 has been revoked"):
        store.enroll("t1", "h", "web-2", "02", now=8)
    assert store.list_tokens(now=8) == []
    (listed,) = store.list_tokens(now=8, include_all=True)
    assert (listed.id, listed.uses_left, listed.nodes) == ("t1", 1, ("web-1",))


def test_the_token_of_each_enrollment_is_recorded(store: Store) -> None:
    node = store.node("web-1")
    assert node is not None and (node.enrolled_by_token, node.cert_serial) == ("t1", "01")


def test_ingest_is_idempotent(store: Store) -> None:
    report = _report("r1", 10, Status.REPAIRED, Status.IN_SYNC)
    assert store.ingest_report(report, now=11) is True
    assert store.ingest_report(report, now=12) is False
    assert store.count_reports("web-1") == 1
    assert len(store.drift("web-1")) == 1
    node = store.node("web-1")
    assert node is not None and node.applied_revision == 3 and node.last_seen == 11


def test_only_drift_flagged_results_are_drift_events(store: Store) -> None:
    store.ingest_report(_report("r1", 10, Status.REPAIRED, drift=False), now=11)
    assert store.drift() == []


def test_drift_is_newest_first_by_detection_not_by_arrival(store: Store) -> None:
    # After an outage the spooled, older reports arrive after a newer one.
    store.ingest_report(_report("new", 50, Status.REPAIRED), now=60)
    for number in range(3):
        store.ingest_report(_report(f"old-{number}", 10 + number, Status.REPAIRED), now=61)
    assert [d.report_id for d in store.drift()] == ["new", "old-2", "old-1", "old-0"]
    assert [d.report_id for d in store.drift(limit=2)] == ["new", "old-2"]


def test_a_late_old_report_does_not_overwrite_newer_status(store: Store) -> None:
    store.ingest_report(_report("new", 20, Status.IN_SYNC, Status.IN_SYNC), now=21)
    store.ingest_report(_report("old", 10, Status.FAILED, Status.DRIFTED), now=22)
    assert {(r.resource_id, r.status) for r in store.statuses()} == {
        ("file/0", Status.IN_SYNC),
        ("file/1", Status.IN_SYNC),
    }
    assert store.count_reports() == 2  # the old one is still kept as history


def test_the_status_remembers_the_revision_it_was_reported_at(store: Store) -> None:
    store.ingest_report(_report("r1", 10, Status.IN_SYNC), now=11)
    node = store.node("web-1")
    assert node is not None and node.status_revision == 3


def test_catalog_problems_are_kept_per_revision(store: Store) -> None:
    store.record_catalog_problem("web-1", 4, ["a.yaml:3: first"], now=5)
    store.record_catalog_problem("web-1", 4, ["a.yaml:3: again"], now=6)
    assert store.catalog_problems(4) == {"web-1": ["a.yaml:3: again"]}
    assert store.catalog_problems(5) == {}


def test_noop_report_does_not_move_applied_revision(store: Store) -> None:
    store.ingest_report(_report("r1", 10, Status.DRIFTED, noop=True), now=11)
    node = store.node("web-1")
    assert node is not None and node.applied_revision == 0


def test_the_observed_state_is_kept_with_the_report_body(store: Store) -> None:
    from protos import plumb_pb2 as pb
    from server.wire import report_from_body, report_record

    observed = {"main_pid": "812", "memory_rss": "12.4 MiB", "uptime": "3605 s"}
    sent = pb.Report(
        id="r1",
        node_name="web-1",
        revision=3,
        trigger=pb.SCHEDULE,
        started_at=9,
        finished_at=10,
        results=[pb.ResourceResult(id="service/web", status=pb.IN_SYNC, observed=observed)],
    )
    store.ingest_report(report_record(sent), now=11)

    body = store.last_report("web-1")
    assert body is not None
    [result] = report_from_body(body).results
    assert dict(result.observed) == observed


def test_state_losses_are_recorded_once_per_id_newest_first(store: Store) -> None:
    first = StateLossRow("web-1", "a", "spooled_reports", 12, 10.0, "spool.db was damaged")
    second = StateLossRow("web-1", "b", "cached_catalog", 1, 20.0, "catalog.pb rejected")
    assert store.record_state_losses([first], now=11.0) == ["a"]
    # The hello is sent again (the welcome was lost): recorded once, acknowledged again.
    assert store.record_state_losses([first, second], now=21.0) == ["a", "b"]
    unknown = StateLossRow("web-2", "a", "spooled_reports", None, 5.0, "spool.db was empty")
    store.record_state_losses([unknown], now=6.0)  # another node's id may be the same
    assert store.state_losses() == {
        "web-1": [
            StateLossRow("web-1", "b", "cached_catalog", 1, 20.0, "catalog.pb rejected", 21.0),
            StateLossRow("web-1", "a", "spooled_reports", 12, 10.0, "spool.db was damaged", 11.0),
        ],
        "web-2": [
            StateLossRow("web-2", "a", "spooled_reports", None, 5.0, "spool.db was empty", 6.0)
        ],
    }
    assert list(store.state_losses("web-2")) == ["web-2"]


# ------------------------------------------------------------ revoking, removing


def test_revoking_keeps_the_node_listed_and_says_so_once(store: Store) -> None:
    changed: list[str] = []
    store.on_node_change(changed.append)
    done = store.revoke_node("web-1", now=5)
    assert (done.serial, done.at, done.already) == ("01", 5, False)
    again = store.revoke_node("web-1", now=6)
    assert (again.at, again.already) == (5, True)
    assert changed == ["web-1"]
    assert store.credential("web-1") == NodeCredential("01", revoked_at=5)
    node = store.node("web-1")
    assert node is not None and (node.revoked_at, node.decommissioned_at) == (5, None)
    assert [n.name for n in store.list_nodes()] == ["web-1"]


def test_an_unknown_node_is_neither_revoked_nor_removed(store: Store) -> None:
    changed: list[str] = []
    store.on_node_change(changed.append)
    with pytest.raises(UnknownNode, match="no node named 'web-9' is enrolled"):
        store.revoke_node("web-9", now=5)
    with pytest.raises(UnknownNode):
        store.decommission_node("web-9", now=5)
    assert changed == []


def test_a_removed_node_leaves_the_fleet_and_keeps_its_history(store: Store) -> None:
    store.ingest_report(_report("r1", 10, Status.REPAIRED, Status.IN_SYNC), now=11)
    changed: list[str] = []
    store.on_node_change(changed.append)
    done = store.decommission_node("web-1", now=20)
    assert (done.serial, done.at, done.already) == ("01", 20, False)
    assert store.decommission_node("web-1", now=21).already
    assert changed == ["web-1"]
    assert store.node("web-1") is None and store.list_nodes() == []
    removed = store.node("web-1", removed=True)
    assert removed is not None and (removed.revoked_at, removed.decommissioned_at) == (20, 20)
    assert [n.name for n in store.list_nodes(removed=True)] == ["web-1"]
    assert store.credential("web-1") == NodeCredential("01", revoked_at=20, decommissioned_at=20)
    assert store.count_reports("web-1") == 1 and len(store.drift("web-1")) == 1
    assert store.last_report("web-1") is not None


def test_a_removed_nodes_name_enrolls_again_as_a_new_node(store: Store) -> None:
    store.ingest_report(_report("r1", 10, Status.REPAIRED, Status.IN_SYNC), now=11)
    store.save_catalogs(3, {"web-1": b"{}"})
    store.decommission_node("web-1", now=20)
    store.add_token("t2", "h2", {"role": "db"}, created_at=0, expires_at=100, uses=1)
    changed: list[str] = []
    store.on_node_change(changed.append)
    assert store.enroll("t2", "h2", "web-1", "02", now=30) == {"role": "db"}
    assert changed == ["web-1"]
    assert store.credential("web-1") == NodeCredential("02")
    node = store.node("web-1")
    assert node is not None and (node.labels, node.enrolled_at) == ({"role": "db"}, 30)
    assert (node.applied_revision, node.status_revision, node.revoked_at) == (0, 0, None)
    # What it was goes (compiled for other labels); what it did stays.
    assert store.statuses() == [] and store.catalog("web-1", 3) is None
    assert store.count_reports("web-1") == 1 and len(store.drift("web-1")) == 1


def test_a_revoked_nodes_name_is_not_taken_over_by_enrolling(store: Store) -> None:
    store.revoke_node("web-1", now=5)
    with pytest.raises(NodeExists):
        store.enroll("t1", "h", "web-1", "04", now=6)
    assert store.credential("web-1") == NodeCredential("01", revoked_at=5)
