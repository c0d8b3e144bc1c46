"""Group commit: Store.ingest_reports (one transaction per batch) and the Ingestor."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from modules.base import Status
from server.errors import IngestFailed
from server.ingest import Ingestor
from server.store import (
    ReportRecord,
    ResultRecord,
    Store,
    drift_events,
    nodes,
    reports,
    resource_status,
)

NODES = ("web-1", "web-2", "db-1")


def _open(path: Path) -> Store:
    store = Store.create(f"sqlite:///{path}")
    store.add_token("t1", "h", {"role": "web"}, created_at=0, expires_at=100, uses=len(NODES))
    for i, node in enumerate(NODES):
        store.enroll("t1", "h", node, f"0{i}", now=1)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = _open(tmp_path / "plumb.db")
    yield store
    store.close()


def _report(
    report_id: str,
    finished: float,
    *statuses: Status,
    node: str = "web-1",
    drift: bool = True,
    noop: bool = False,
    revision: int = 3,
) -> ReportRecord:
    results = [
        ResultRecord(
            f"file/{i}",
            "web",
            s,
            [{"field": "content", "observed": "a", "desired": f"b{report_id}"}],
            ["CIS-1"] if i % 2 else [],
            drift,
        )
        for i, s in enumerate(statuses)
    ]
    return ReportRecord(
        report_id,
        node,
        revision,
        noop,
        "schedule",
        finished - 1,
        finished,
        results,
        report_id.encode(),
    )


def _status(store: Store, node: str = "web-1") -> dict[str, tuple[str, str]]:
    """resource id -> (status, id of the report it came from)."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(resource_status).where(resource_status.c.node == node)).all()
    return {r.resource_id: (r.status, r.report_id) for r in rows}


def _snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Everything report ingest writes, comparable between two stores."""
    with store.engine.connect() as conn:
        return {
            "reports": sorted(tuple(r) for r in conn.execute(sa.select(reports))),
            # Drift events: all but the generated id.
            "drift": sorted(tuple(r) for r in conn.execute(sa.select(*list(drift_events.c)[1:]))),
            "status": sorted(tuple(r) for r in conn.execute(sa.select(resource_status))),
            "nodes": sorted(
                (r.name, r.last_seen, r.applied_revision, r.status_as_of)
                for r in conn.execute(sa.select(nodes))
            ),
        }


# ------------------------------------------------------------ Store.ingest_reports


def test_a_batch_is_idempotent_across_and_within_batches(store: Store) -> None:
    first = _report("r1", 10, Status.REPAIRED)
    again = _report("r1", 30, Status.FAILED)  # the same id: the first one stored wins
    assert store.ingest_reports([first, _report("r2", 11, Status.IN_SYNC), again], 12) == [
        True,
        True,
        False,
    ]
    assert store.ingest_reports([_report("r2", 11), _report("r3", 13, Status.IN_SYNC)], 14) == [
        False,
        True,
    ]
    assert store.count_reports() == 3
    with store.engine.connect() as conn:
        kept = conn.execute(sa.select(reports.c.finished_at).where(reports.c.id == "r1"))
        assert kept.scalar_one() == 10  # the first r1, not the one resent in its batch
    assert [d.report_id for d in store.drift()] == ["r1"]
    assert store.ingest_reports([], 15) == []


def test_a_batch_of_only_known_reports_changes_nothing(store: Store) -> None:
    store.ingest_reports([_report("r1", 10, Status.REPAIRED)], now=11)
    before = _snapshot(store)
    assert store.ingest_reports([_report("r1", 10, Status.FAILED)], now=99) == [False]
    assert _snapshot(store) == before


@pytest.mark.parametrize(
    ("batch", "current"),
    [
        (["old", "new"], "new"),
        (["new", "old"], "new"),  # a late report in the same batch does not win
        (["tie-a", "tie-b"], "tie-b"),  # the same finished_at: the later one, as one by one
    ],
)
def test_the_newest_report_of_a_batch_becomes_the_status(
    store: Store, batch: list[str], current: str
) -> None:
    finished = {"old": 10.0, "new": 20.0, "tie-a": 15.0, "tie-b": 15.0}
    store.ingest_reports([_report(r, finished[r], Status.IN_SYNC) for r in batch], now=30)
    assert set(_status(store).values()) == {("in_sync", current)}
    node = store.node("web-1")
    assert node is not None and node.last_seen == 30


def test_a_batch_older_than_the_status_is_kept_but_not_folded(store: Store) -> None:
    store.ingest_reports([_report("new", 20, Status.IN_SYNC, Status.IN_SYNC)], now=21)
    store.ingest_reports([_report("old", 10, Status.FAILED), _report("older", 5)], now=22)
    assert _status(store) == {"file/0": ("in_sync", "new"), "file/1": ("in_sync", "new")}
    assert store.count_reports() == 3


def test_the_status_is_replaced_whole(store: Store) -> None:
    store.ingest_reports([_report("r1", 10, Status.IN_SYNC, Status.IN_SYNC)], now=11)
    store.ingest_reports([_report("r2", 20, Status.DRIFTED)], now=21)
    assert _status(store) == {"file/0": ("drifted", "r2")}  # file/1 is no longer managed


def test_drift_flagged_results_are_drift_events_repaired_drifted_or_failed(
    store: Store,
) -> None:
    statuses = (Status.REPAIRED, Status.DRIFTED, Status.FAILED, Status.IN_SYNC)
    store.ingest_reports(
        [_report("flagged", 10, *statuses), _report("unflagged", 11, *statuses, drift=False)],
        now=12,
    )
    events = store.drift()
    # A drift whose repair failed is drift too: it is what most needs seeing.
    assert sorted((d.report_id, d.resource_id, d.status) for d in events) == [
        ("flagged", "file/0", Status.REPAIRED),
        ("flagged", "file/1", Status.DRIFTED),
        ("flagged", "file/2", Status.FAILED),
    ]
    assert events[0].changes == [{"field": "content", "observed": "a", "desired": "bflagged"}]
    assert {d.detected_at for d in events} == {10}


def test_noop_reports_do_not_move_the_applied_revision(store: Store) -> None:
    store.ingest_reports(
        [
            _report("r1", 10, revision=3),
            _report("r2", 11, revision=5, noop=True),
            _report("r3", 12, node="web-2", revision=7, noop=True),
        ],
        now=13,
    )
    web1, web2 = store.node("web-1"), store.node("web-2")
    assert web1 is not None and web1.applied_revision == 3
    assert web2 is not None and web2.applied_revision == 0 and web2.last_seen == 13


def test_summary_counts_each_status(store: Store) -> None:
    store.ingest_reports([_report("r1", 10, Status.IN_SYNC, Status.IN_SYNC, Status.FAILED)], 11)
    with store.engine.connect() as conn:
        summary = conn.execute(sa.select(reports.c.summary)).scalar_one()
    assert summary == {
        "in_sync": 2,
        "repaired": 0,
        "drifted": 0,
        "failed": 1,
        "skipped": 0,
        "unknown": 0,
    }


def test_a_report_from_an_unknown_node_is_stored_without_status(store: Store) -> None:
    assert store.ingest_reports([_report("r1", 10, Status.IN_SYNC, node="ghost")], 11) == [True]
    assert store.count_reports("ghost") == 1
    assert _status(store, "ghost") == {}


def test_batches_end_as_one_by_one_would(tmp_path: Path) -> None:
    rng = random.Random(7)
    statuses = list(Status)
    stream = [
        _report(
            f"r{rng.randrange(60)}",  # ids repeat: resent reports
            float(rng.randrange(40)),  # finished_at repeats and goes back: late spools
            *rng.choices(statuses, k=rng.randrange(4)),
            node=rng.choice(NODES),
            drift=rng.random() < 0.5,
            noop=rng.random() < 0.3,
            revision=rng.randrange(1, 9),
        )
        for _ in range(150)
    ]
    one_by_one, batched = _open(tmp_path / "a.db"), _open(tmp_path / "b.db")
    try:
        expected = [one_by_one.ingest_report(r, now=100) for r in stream]
        got: list[bool] = []
        start = 0
        while start < len(stream):
            size = rng.randrange(1, 40)
            got += batched.ingest_reports(stream[start : start + size], now=100)
            start += size
        assert got == expected
        assert _snapshot(batched) == _snapshot(one_by_one)
    finally:
        one_by_one.close()
        batched.close()


def test_a_failed_batch_stores_nothing(store: Store) -> None:
    broken = _report("broken", 20, Status.IN_SYNC)
    broken.results.append(broken.results[0])  # one resource twice: the status row clashes
    with pytest.raises(sa.exc.IntegrityError):
        store.ingest_reports([_report("fine", 10, Status.REPAIRED), broken], now=21)
    assert store.count_reports() == 0
    assert store.drift() == []


# ------------------------------------------------------------ Ingestor


class GatedStore(Store):
    """A real store whose next batch can be held inside ingest_reports until released."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = None

    def ingest_reports(self, batch: Sequence[ReportRecord], now: float) -> list[bool]:
        self.batches.append([r.id for r in batch])
        gate, self.gate = self.gate, None
        self.entered.set()
        if gate is not None and not gate.wait(10):
            raise TimeoutError("the test never released the gate")
        return super().ingest_reports(batch, now)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[GatedStore]:
    store = GatedStore.create(f"sqlite:///{tmp_path / 'plumb.db'}")
    store.add_token("t1", "h", {}, created_at=0, expires_at=100, uses=1)
    store.enroll("t1", "h", "web-1", "01", now=1)
    yield store
    store.close()


def _run(test: Callable[[Ingestor], Awaitable[None]], store: Store, **kwargs: Any) -> None:
    async def main() -> None:
        ingestor = Ingestor(store, clock=lambda: 50.0, **kwargs)
        ingestor.start()
        try:
            await test(ingestor)
        finally:
            await ingestor.close()

    asyncio.run(main())


async def _hold_first_commit(
    gated: GatedStore, ingestor: Ingestor
) -> tuple[asyncio.Future[bool], threading.Event]:
    """Submit one report; return once its commit is under way, held until the gate opens."""
    gate = gated.gate = threading.Event()
    first = ingestor.submit(_report("first", 1, Status.IN_SYNC))
    assert await asyncio.to_thread(gated.entered.wait, 10)
    return first, gate


def test_concurrent_submissions_share_commits(gated: GatedStore) -> None:
    async def test(ingestor: Ingestor) -> None:
        results = await asyncio.gather(
            *(ingestor.submit(_report(f"r{i}", 2 + i, Status.IN_SYNC)) for i in range(50))
        )
        assert results == [True] * 50
        assert ingestor.commits < 50
        assert ingestor.committed == 50
        assert gated.count_reports() == 50

    _run(test, gated)


def test_reports_submitted_during_a_commit_share_the_next_one(gated: GatedStore) -> None:
    async def test(ingestor: Ingestor) -> None:
        first, gate = await _hold_first_commit(gated, ingestor)
        waiting = [ingestor.submit(_report(f"r{i}", 2 + i, Status.REPAIRED)) for i in range(20)]
        again = ingestor.submit(_report("r3", 2, Status.FAILED))
        assert not any(f.done() for f in [first, *waiting, again])
        gate.set()
        assert await first is True
        assert await asyncio.gather(*waiting) == [True] * 20
        assert await again is False  # its id was stored earlier in the same batch
        assert gated.batches == [["first"], [f"r{i}" for i in range(20)] + ["r3"]]
        assert (ingestor.commits, ingestor.committed) == (2, 22)
        assert gated.count_reports() == 21

    _run(test, gated)


def test_batches_are_capped(gated: GatedStore) -> None:
    async def test(ingestor: Ingestor) -> None:
        _, gate = await _hold_first_commit(gated, ingestor)
        waiting = [ingestor.submit(_report(f"r{i}", 2 + i)) for i in range(7)]
        gate.set()
        assert await asyncio.gather(*waiting) == [True] * 7
        assert [len(b) for b in gated.batches] == [1, 3, 3, 1]

    _run(test, gated, max_batch=3)


def test_a_failed_commit_fails_its_submitters_and_later_ones_still_commit(
    gated: GatedStore,
) -> None:
    async def test(ingestor: Ingestor) -> None:
        _, gate = await _hold_first_commit(gated, ingestor)
        broken = _report("broken", 20, Status.IN_SYNC)
        broken.results.append(broken.results[0])  # the status row clashes: IntegrityError
        doomed = [ingestor.submit(_report("fine", 10, Status.REPAIRED)), ingestor.submit(broken)]
        gate.set()
        for future in doomed:
            with pytest.raises(IngestFailed, match="not stored") as failed:
                await future
            assert isinstance(failed.value.__cause__, sa.exc.IntegrityError)
        assert (ingestor.commits, ingestor.failed_commits) == (1, 1)
        assert gated.count_reports() == 1  # only "first": nothing of the failed batch
        # The agent sends "fine" again on its next session: stored now.
        assert await ingestor.submit(_report("fine", 10, Status.REPAIRED)) is True
        assert [d.report_id for d in gated.drift()] == ["fine"]

    _run(test, gated)


def test_close_commits_what_is_queued_then_refuses(gated: GatedStore) -> None:
    async def main() -> None:
        ingestor = Ingestor(gated)
        ingestor.start()
        first, gate = await _hold_first_commit(gated, ingestor)
        queued = ingestor.submit(_report("queued", 2))
        gate.set()
        await ingestor.close()
        assert (first.result(), queued.result()) == (True, True)
        assert gated.batches == [["first"], ["queued"]]
        with pytest.raises(IngestFailed, match="stopping"):
            ingestor.submit(_report("late", 3))

    asyncio.run(main())


def test_close_without_start_fails_what_was_submitted(gated: GatedStore) -> None:
    async def main() -> None:
        ingestor = Ingestor(gated)
        orphan = ingestor.submit(_report("orphan", 2))
        await ingestor.close()
        with pytest.raises(IngestFailed, match="stopping"):
            await orphan
        assert gated.count_reports() == 0

    asyncio.run(main())


def test_a_cancelled_submitter_is_left_out(gated: GatedStore) -> None:
    async def test(ingestor: Ingestor) -> None:
        _, gate = await _hold_first_commit(gated, ingestor)
        gone = ingestor.submit(_report("gone", 2))
        kept = ingestor.submit(_report("kept", 3))
        gone.cancel()  # its stream ended: nobody is left to acknowledge it to
        gate.set()
        assert await kept is True
        assert gated.batches == [["first"], ["kept"]]

    _run(test, gated)
