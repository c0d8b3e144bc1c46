"""What the agent lost of its own state, kept until the server has recorded it.

When something the agent keeps is damaged — a report spool that is not a
sound database, a cached catalog that does not parse or verify — it is set
aside in the state dir for inspection and a fresh one is started
(agent/spool.py, agent/cache.py), so the agent carries on. What that cost is
written to ``losses.json`` and sent with every hello until the server's
welcome lists it as recorded: an operator sees "web-1 lost 12 spooled reports
at T" in ``plumb nodes``, even if the agent restarts (or loses its
connection) before the server has heard of it. Each loss has an id made
here, so a hello sent twice is recorded once.

Recorded losses are kept a while (the newest :data:`KEEP_RECORDED`), for
``plumb-agent status``; unrecorded ones are never dropped.

The daemon and ``run --once`` may both write the file: every change is one
read-modify-write under an flock of the state dir. A loss found while the
state dir takes no writes (agent/state.py) waits in memory, is sent all the
same, and is written with the next change that goes through.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from agent.state import UNWRITABLE, StateDir, write_atomic
from protos import plumb_pb2 as pb

log = logging.getLogger("plumb.agent")

#: ``what`` of a loss: reports written to the spool and never delivered.
SPOOLED_REPORTS = "spooled_reports"
#: ``what`` of a loss: the cached catalog (the server sends a fresh one).
CACHED_CATALOG = "cached_catalog"
#: ``count`` when nobody can tell how many were lost (a spool found empty).
UNKNOWN = -1
#: Losses the server has recorded that the file still keeps, for ``status``.
KEEP_RECORDED = 10


@dataclasses.dataclass(frozen=True)
class StateLoss:
    id: str
    what: str
    count: int  # UNKNOWN (-1) when not known
    at: float  # unix seconds, when the damage was found
    detail: str
    recorded: bool = False  # the server said it has it

    def to_wire(self) -> pb.StateLoss:
        return pb.StateLoss(
            id=self.id, what=self.what, count=self.count, at=self.at, detail=self.detail
        )

    def sentence(self) -> str:
        """``lost 12 spooled reports (spool.db ...)``, for logs and ``status``."""
        return f"lost {describe(self.what, self.count)} ({self.detail})"


def describe(what: str, count: int) -> str:
    """``12 spooled reports``, ``an unknown number of spooled reports``, ``its cached catalog``."""
    if what == CACHED_CATALOG:
        return "its cached catalog"
    noun = what.replace("_", " ")
    if count < 0:
        return f"an unknown number of {noun}"
    return f"{count} {noun[:-1] if count == 1 and noun.endswith('s') else noun}"


class LossLog:
    """``losses.json``: losses found, and whether the server has recorded them."""

    def __init__(self, state: StateDir) -> None:
        self.state = state
        #: Grows by one with every loss this process records: the daemon
        #: reconnects when it changed since the hello, so the server hears of
        #: it (and, for a catalog, sends a fresh one) without waiting.
        self.generation = 0
        self._lock = threading.Lock()
        self._unsaved: list[StateLoss] = []  # found while the file could not be written

    def record(self, what: str, count: int, detail: str) -> StateLoss:
        loss = StateLoss(str(uuid.uuid4()), what, count, time.time(), detail)
        with self._lock:
            self._unsaved.append(loss)
        self.catch_up()
        self.generation += 1
        return loss

    def catch_up(self) -> bool:
        """Write the losses that wait in memory; whether none waits now."""
        if not self._unsaved:
            return True
        return self._change(lambda losses: None)

    def pending(self) -> list[StateLoss]:
        """Losses the server has not recorded yet, oldest first."""
        return [loss for loss in self.recent() if not loss.recorded]

    def recent(self) -> list[StateLoss]:
        """Every loss the file keeps, and those waiting in memory, oldest first."""
        with self._lock:
            unsaved = list(self._unsaved)
        return _parse(self.state.read_json(self.state.losses)) + unsaved

    def recorded(self, ids: Iterable[str]) -> None:
        """The server has recorded these: stop sending them."""
        done = set(ids)
        if not done:
            return

        def mark(losses: list[StateLoss]) -> None:
            losses[:] = [
                dataclasses.replace(x, recorded=x.recorded or x.id in done) for x in losses
            ]
            kept = [x for x in losses if x.recorded][-KEEP_RECORDED:]
            losses[:] = [x for x in losses if not x.recorded or x in kept]

        if not self._change(mark):  # those in memory at least need not be sent again
            with self._lock:
                self._unsaved = [x for x in self._unsaved if x.id not in done]

    def _change(self, change: Callable[[list[StateLoss]], None]) -> bool:
        """Apply ``change`` to the file's losses (and memory's); False if it cannot be written."""
        try:
            with self._changing() as losses:
                change(losses)
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            self.state.unwritable(f"{self.state.losses.name}: {exc.strerror}")
            return False
        return True

    @contextmanager
    def _changing(self) -> Iterator[list[StateLoss]]:
        with self._lock:
            directory = os.open(self.state.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(directory, fcntl.LOCK_EX)
                losses = _parse(self.state.read_json(self.state.losses)) + self._unsaved
                yield losses
                body = {"losses": [dataclasses.asdict(x) for x in losses]}
                write_atomic(self.state.losses, json.dumps(body, indent=2).encode())
                self._unsaved = []
            finally:
                os.close(directory)  # and with it the flock


def _parse(raw: Any) -> list[StateLoss]:
    """The losses in the file's JSON; a damaged file or entry reads as nothing (and says so)."""
    entries = raw.get("losses") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        return []
    losses = []
    for entry in entries:
        try:
            losses.append(
                StateLoss(
                    id=str(entry["id"]),
                    what=str(entry["what"]),
                    count=int(entry["count"]),
                    at=float(entry["at"]),
                    detail=str(entry["detail"]),
                    recorded=bool(entry.get("recorded", False)),
                )
            )
        except (KeyError, TypeError, ValueError):
            log.warning("losses.json: ignoring an entry that is not a loss: %r", entry)
    return losses
