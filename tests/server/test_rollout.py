"""Staged rollouts' arithmetic: amounts, batches, failures allowed (server/rollout.py).

The rollouts themselves run against real agents in
tests/integration/test_rollouts.py; these are the edge cases of cutting a
fleet into batches, which the anchors got wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.base import Status
from protos import plumb_pb2 as pb
from server.fleet import Fleet
from server.hub import Hub
from server.pki import ROLE_SIGNER, create_ca, issue_keypair
from server.rollout import Amount, Rollouts, Settings, SettingsError
from server.store import ReportRecord, ResultRecord, Store

NODES = [f"n{i:02d}" for i in range(10)]


def settings(**given: object) -> Settings:
    return Settings.of(pb.RolloutSettings(**given))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "nodes", "sizes", "allowed"),
    [
        ({"canary": "1", "batch": "3"}, NODES, [1, 3, 3, 3], 0),
        ({"canary": "10%", "batch": "25%"}, NODES, [1, 3, 3, 3], 0),
        ({"canary": "15%"}, NODES, [2, 8], 0),  # rounded up: a canary of 1.5 is 2
        ({"batch": "4"}, NODES, [4, 4, 2], 0),
        ({}, NODES, [10], 0),  # no canary, no batch: one batch, as a plain push
        ({"batch": "1"}, ["only"], [1], 0),  # a batch of 1 of 1
        ({"canary": "1"}, ["only"], [1], 0),  # the canary is the whole fleet
        ({"canary": "100%"}, NODES, [10], 0),
        ({"canary": "50", "batch": "50"}, NODES, [10], 0),  # more than the fleet: all of it
        ({"batch": "100%"}, NODES, [10], 0),
        ({"canary": "0", "batch": "5"}, NODES, [5, 5], 0),  # canary 0: none
        ({"max_failures": "2"}, NODES, [10], 2),
        ({"max_failures": "25%"}, NODES, [10], 2),  # rounded down: 2.5 allows 2
        ({"max_failures": "10%"}, NODES[:5], [5], 0),  # 0.5 allows none
        ({"max_failures": "100%"}, NODES, [10], 10),  # never halts
        ({"max_failures": "150%"}, NODES, [10], 15),  # more than the fleet: never halts
        ({"batch": "3"}, [], [], 0),  # nothing changes anywhere: nothing to hand out
    ],
)
def test_batches_and_failures_allowed(
    given: dict[str, str], nodes: list[str], sizes: list[int], allowed: int
) -> None:
    new = settings(**given).new_rollout(4, nodes)
    assert [len(b) for b in new.batches] == sizes
    assert sorted(n for b in new.batches for n in b) == sorted(nodes)  # each node once
    assert (new.max_failures, new.previous_revision) == (allowed, 4)


def test_the_canary_is_the_first_nodes_by_name_whatever_the_order_given() -> None:
    new = settings(canary="2", batch="3").new_rollout(1, list(reversed(NODES)))
    assert new.batches[0] == ("n00", "n01")
    assert new.batches[1] == ("n02", "n03", "n04")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"batch": "0"}, "--batch: a batch of 0 nodes would never end"),
        ({"batch": "0%"}, "--batch: a batch of 0 nodes would never end"),
        ({"canary": "101%"}, "--canary: at most 100%"),
        ({"batch": "-1"}, "--batch: expected a number of nodes (3) or a share (25%)"),
        ({"max_failures": "a few"}, "--max-failures: expected a number"),
        ({"batch_timeout_s": 0.5}, "--batch-timeout: from 1 to 86400 seconds"),
        ({"pause_after_canary": True}, "--pause-after-canary needs --canary"),
    ],
)
def test_settings_that_make_no_sense_are_refused_naming_the_flag(
    given: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(**given)


def test_a_share_of_a_few_nodes_rounds_up_for_batches_and_never_to_zero() -> None:
    assert Amount(1, percent=True).of(3, round_up=True) == 1
    assert settings(batch="1%").new_rollout(0, NODES[:3]).batches == (("n00",), ("n01",), ("n02",))


# -- what a restarted server finds in the store -----------------------------------


def _report(node: str, revision: int, status: Status) -> ReportRecord:
    result = ResultRecord("file/motd", "motd", status, [], [])
    return ReportRecord(f"r-{node}", node, revision, False, "push", 1.0, 2.0, [result], b"")


def test_a_restarted_server_takes_the_outcomes_a_crash_lost_from_the_store(
    tmp_path: Path,
) -> None:
    store = Store.create(f"sqlite:///{tmp_path / 'plumb.db'}")
    try:
        store.add_token("t", "h", {}, created_at=0, expires_at=1e12, uses=10)
        for name in ("web-1", "web-2", "web-3"):
            store.enroll("t", "h", name, name, now=1)
        fleet = Fleet(store, issue_keypair(create_ca(), "plumb-server", ROLE_SIGNER))
        motd = (
            "name: motd\ntarget: all\nresources:\n"
            "  - {kind: file, name: motd, spec: {path: /etc/motd, content: '%s'}}\n"
        )
        assert fleet.push([("m.yaml", motd % "v1")]).revision == 1
        staged = settings(batch="3").new_rollout
        assert fleet.push([("m.yaml", motd % "v2")], staged=staged).revision == 2
        row = store.latest_rollout()
        assert row is not None
        store.set_rollout_nodes(
            row.id, dict.fromkeys(["web-1", "web-2", "web-3"], ("sent", None)), 5.0
        )
        # Before the crash: web-1 and web-2 reported revision 2, web-3 nothing yet.
        assert store.ingest_reports([_report("web-1", 2, Status.IN_SYNC)], 6.0) == [True]
        assert store.ingest_reports([_report("web-2", 2, Status.FAILED)], 6.0) == [True]
        rollouts = Rollouts(store, Hub(), fleet.signed_catalog)
        assert rollouts.recover() == {
            "web-1": ("succeeded", None),
            "web-2": ("failed", "its run of revision 2 failed: file/motd"),
        }
        again = store.latest_rollout()
        assert again is not None
        assert {n.node: n.state for n in again.nodes} == {
            "web-1": "succeeded",
            "web-2": "failed",
            "web-3": "sent",  # still in flight: its deadline decides
        }
        assert rollouts.recover() == {}  # once
    finally:
        store.close()
