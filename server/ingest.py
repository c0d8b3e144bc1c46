"""Group commit for run reports: every session's reports, one transaction per batch.

A report is acknowledged to its agent (which then deletes it from its spool)
only once its commit is durable, and the store commits with a full fsync. One
transaction per report would cap ingest at the disk's fsync rate, so the
:class:`Ingestor` funnels the reports of all sessions into one writer::

    session ─ submit(r1) ─┐
    session ─ submit(r2) ─┼─▶ queue ─▶ worker thread: store.ingest_reports([r1, r2, r3])
    session ─ submit(r3) ─┘            one transaction; then r1, r2 and r3 are answered

Whenever the previous commit has finished, the worker takes everything that
queued up meanwhile (up to ``max_batch``) and commits it. Nothing waits on a
timer: a lone report is committed at once, and under load the batches grow
by themselves as reports pile up during each commit (classic group commit).

If a commit fails, every submitter of that batch gets :class:`IngestFailed`
and nothing of the batch is acknowledged; their agents send the reports again
on their next session. Later batches are tried as usual.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from server.errors import IngestFailed
from server.store import ReportRecord, Store

log = logging.getLogger("plumb.server.ingest")


#: Reports per transaction at most. Under sustained load every batch is this
#: big: larger batches spread each commit's fixed costs (the fsync, the index
#: pages every batch touches, one status fold per node) over more reports, at
#: the price of a longer wait for the acknowledgement.
MAX_BATCH = 1000


@dataclasses.dataclass(slots=True)
class _Pending:
    record: ReportRecord
    done: asyncio.Future[bool]


class Ingestor:
    """Commits submitted reports in batches, in a worker thread, one batch at a time.

    Use from one event loop: :meth:`start`, then ``await submit(record)`` from
    any number of tasks, and :meth:`close` to commit what is queued and stop.
    """

    def __init__(
        self, store: Store, max_batch: int = MAX_BATCH, clock: Callable[[], float] = time.time
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.store = store
        self.max_batch = max_batch
        self.clock = clock
        #: Transactions committed, and the reports submitted through them: a
        #: measure of how well reports are grouped (reports / commits).
        self.commits = 0
        self.committed = 0
        self.failed_commits = 0
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="plumb-ingest")

    async def close(self) -> None:
        """Refuse new reports, commit every one already submitted, and stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        # Never started: nobody will commit these, so they must not wait forever.
        self._fail(list(self._queue), IngestFailed("the server is stopping"))
        self._queue.clear()

    def submit(self, record: ReportRecord) -> asyncio.Future[bool]:
        """Queue ``record`` for the next commit; await the result to know it is durable.

        The future resolves once the record is durably stored: True, or False
        if its id already was. It raises :class:`IngestFailed` if the record
        could not be stored; then it must not be acknowledged. Queuing happens
        now, in the caller, so the order of calls is the order of commits.
        """
        if self._closing:
            raise IngestFailed(f"report {record.id} not stored: the server is stopping")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(record, done))
        self._wakeup.set()
        return done

    async def _run(self) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = self._take()
                await self._commit(batch)
        finally:
            # Only if the worker itself is cancelled or breaks: whatever it
            # holds or has queued can no longer be committed, and no submitter
            # may be left waiting for an answer.
            self._closing = True
            stopped = IngestFailed("the report writer stopped")
            self._fail([*batch, *self._queue], stopped)
            self._queue.clear()

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.max_batch:
            pending = self._queue.popleft()
            # A submitter that gave up (its stream ended) cannot be acknowledged;
            # its agent sends the report again on its next session.
            if not pending.done.cancelled():
                batch.append(pending)
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        records = [p.record for p in batch]
        try:
            stored = await asyncio.to_thread(self.store.ingest_reports, records, self.clock())
        except Exception as exc:
            self.failed_commits += 1
            log.warning("storing a batch of %d reports failed: %s", len(batch), _reason(exc))
            self._fail(batch, exc)
            return
        self.commits += 1
        self.committed += len(batch)
        for pending, is_new in zip(batch, stored, strict=True):
            if not pending.done.done():
                pending.done.set_result(is_new)

    @staticmethod
    def _fail(batch: list[_Pending], cause: Exception) -> None:
        for pending in batch:
            if not pending.done.done():
                # One exception object per submitter: each raises it in its own task.
                error = IngestFailed(f"report {pending.record.id} not stored: {_reason(cause)}")
                error.__cause__ = cause
                pending.done.set_exception(error)


def _reason(exc: Exception) -> str:
    # A database error's own message, without the statement and its parameters
    # (which SQLAlchemy appends: up to ten rows of report bodies).
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}"
    return str(exc)
