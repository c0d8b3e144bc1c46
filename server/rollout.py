"""Staged rollouts: a revision handed to its nodes batch by batch, halted when too many fail.

``plumb push --canary 1 --batch 25% --max-failures 2 ...`` stores the new
revision with a rollout (server/store.py, in the same transaction): the nodes
whose catalog it changes, split into batches, the canary first. Nodes not
reached yet keep the previous revision (:meth:`Rollouts.pinned`, which
Fleet.prepare asks, so a node that connects meanwhile gets the old one too).
Nodes whose catalog the revision does not change are not part of it and
move on at once.

A batch is sent, then done when each of its nodes has an outcome:

- ``succeeded``: it reported the new revision without a failed resource;
- ``failed``: that report has failed resources (a change confirm-or-revert
  reverted is one), or it disconnected during its batch, or it did not
  report the revision within ``batch_timeout_s`` (offline nodes too).

When the failures of the rollout exceed ``max_failures`` it halts: nothing
more is sent; the nodes not reached keep the previous revision, offline ones
too when they connect. An operator then resumes it (go on anyway), aborts it
(stop here; each node keeps what it has until the next push) or rolls it
back: a new revision with the previous content, rolled out in batches to the
nodes that were reached (and never halting, so the fleet cannot be left
split by it). While a rollout is running, paused or halted, a push, a
``manifest rm`` and a rollback are refused: they would hand the halted
revision's content to every node.

All of it is in the store: a restarted server picks the rollout up where it
was (a batch in flight keeps its deadline, measured from when it was sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from modules.base import Status
from protos import plumb_pb2 as pb
from server.given import Given, GivenCatalogs
from server.hub import Hub
from server.store import NewRollout, RolloutNode, RolloutRow, Store

log = logging.getLogger("plumb.server.rollout")

DEFAULT_BATCH_TIMEOUT_S = 300.0


class State(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # after the canary, as asked (--pause-after-canary), or by hand
    HALTED = "halted"  # too many failures
    DONE = "done"
    ABORTED = "aborted"


#: While a rollout is in one of these, nothing else may make a revision.
ACTIVE = frozenset({State.RUNNING, State.PAUSED, State.HALTED})

WAITING, SENT, SUCCEEDED, FAILED = "waiting", "sent", "succeeded", "failed"


class SettingsError(ValueError):
    """Rollout settings that make no sense; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Amount:
    """``N`` nodes or ``N%`` of the rollout's nodes."""

    value: int
    percent: bool = False

    @classmethod
    def parse(cls, text: str, flag: str) -> Amount:
        found = re.fullmatch(r"\s*(\d{1,9})\s*(%?)\s*", text)
        if found is None:
            raise SettingsError(f"{flag}: expected a number of nodes (3) or a share (25%)")
        return cls(int(found.group(1)), bool(found.group(2)))

    def of(self, total: int, round_up: bool) -> int:
        if not self.percent:
            return self.value
        share = total * self.value / 100
        return math.ceil(share) if round_up else math.floor(share)

    def __str__(self) -> str:
        return f"{self.value}{'%' if self.percent else ''}"


@dataclasses.dataclass(frozen=True)
class Settings:
    canary: Amount | None = None  # None: no canary batch
    batch: Amount | None = None  # None: every node after the canary in one batch
    max_failures: Amount = Amount(0)
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S
    pause_after_canary: bool = False

    @classmethod
    def of(cls, wire: pb.RolloutSettings) -> Settings:
        """From the wire; SettingsError naming the flag for what makes no sense."""
        canary = Amount.parse(wire.canary, "--canary") if wire.canary else None
        batch = Amount.parse(wire.batch, "--batch") if wire.batch else None
        if batch is not None and batch.value == 0:
            raise SettingsError("--batch: a batch of 0 nodes would never end")
        for flag, amount in (("--canary", canary), ("--batch", batch)):
            if amount is not None and amount.percent and amount.value > 100:
                raise SettingsError(f"{flag}: at most 100%, not {amount}")
        failures = Amount.parse(wire.max_failures, "--max-failures") if wire.max_failures else None
        timeout = wire.batch_timeout_s or DEFAULT_BATCH_TIMEOUT_S
        if not 1 <= timeout <= 86400:
            raise SettingsError("--batch-timeout: from 1 to 86400 seconds")
        if wire.pause_after_canary and canary is None:
            raise SettingsError("--pause-after-canary needs --canary")
        return cls(canary, batch, failures or Amount(0), timeout, wire.pause_after_canary)

    def batches(self, nodes: Sequence[str]) -> list[tuple[str, ...]]:
        """``nodes`` (in name order) cut into batches: the canary, then the others."""
        rest = sorted(nodes)
        batches: list[tuple[str, ...]] = []
        if self.canary is not None:
            size = min(len(rest), self.canary.of(len(nodes), round_up=True))
            if size:
                batches.append(tuple(rest[:size]))
                rest = rest[size:]
        size = len(rest) if self.batch is None else max(1, self.batch.of(len(nodes), True))
        while rest:
            batches.append(tuple(rest[:size]))
            rest = rest[size:]
        return batches

    def new_rollout(self, previous: int, nodes: Sequence[str], kind: str = "push") -> NewRollout:
        return NewRollout(
            previous_revision=previous,
            settings=self.to_json(),
            # Failures allowed: rounded down, so "10%" of 5 nodes allows none.
            max_failures=min(self.max_failures.of(len(nodes), round_up=False), 2**31 - 1),
            batches=tuple(self.batches(nodes)),
            kind=kind,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "canary": str(self.canary) if self.canary else None,
            "batch": str(self.batch) if self.batch else None,
            "max_failures": str(self.max_failures),
            "batch_timeout_s": self.batch_timeout_s,
            "pause_after_canary": self.pause_after_canary,
        }


def failures(row: RolloutRow) -> list[RolloutNode]:
    return [n for n in row.nodes if n.state == FAILED]


class Rollouts:
    """Drives the newest rollout, and says which nodes it keeps on the previous revision."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        sign: Callable[[str], pb.SignedCatalog | None],
        given: GivenCatalogs | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``sign(node)``: the node's catalog as it is to have it now (Fleet.signed_catalog)."""
        self.store = store
        self.hub = hub
        self.sign = sign
        self.given = given
        self.clock = clock
        self._current: RolloutRow | None = None  # the newest, if it is of the latest revision
        self._members: dict[str, RolloutNode] = {}  # its nodes by name: asked per report
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reload()

    # ------------------------------------------------------------ what others ask

    def reload(self) -> RolloutRow | None:
        """Read the newest rollout again (after a push stored one, or a step changed it)."""
        row = self.store.latest_rollout()
        latest = self.store.latest_revision_id()
        self._current = row if row is not None and row.revision == latest else None
        self._members = {n.node: n for n in self._current.nodes} if self._current else {}
        return self._current

    @property
    def current(self) -> RolloutRow | None:
        return self._current

    def pinned(self, node: str) -> int | None:
        """The revision ``node`` is kept on while the rollout has not reached it; None: the
        latest. Cheap (in memory): every session start asks."""
        row, member = self._current, self._members.get(node)
        if row is None or member is None or row.state == State.DONE:
            return None
        return row.previous_revision if member.state == WAITING else None

    def blocking(self) -> str | None:
        """Why a new revision cannot be made now (a rollout is in progress); None: it can."""
        row = self._current
        if row is None or row.state not in ACTIVE:
            return None
        return (
            f"rollout {row.id} of revision {row.revision} is {row.state}: "
            "'plumb rollout resume', 'abort' or 'rollback' it first ('plumb rollout status')"
        )

    # ------------------------------------------------------------ events

    def reported(self, node: str, report: pb.Report) -> None:
        """A node's run report (after it was stored): its outcome, if the rollout waits for it."""
        row = self._current
        if row is None or report.revision != row.revision or not self._sent(row, node):
            return
        broken = [r.id for r in report.results if r.status == pb.FAILED]
        outcome: tuple[str, str | None] = (SUCCEEDED, None)
        if broken:
            more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
            shown = ", ".join(broken[:5]) + more
            outcome = (FAILED, f"its run of revision {row.revision} failed: {shown}")
        self._settle(row, {node: outcome})

    def disconnected(self, node: str) -> None:
        row = self._current
        if row is None or row.state != State.RUNNING or not self._sent(row, node):
            return
        self._settle(row, {node: (FAILED, "it disconnected during its batch")})

    def _sent(self, row: RolloutRow, node: str) -> bool:
        member = self._members.get(node)
        return member is not None and member.state == SENT

    def _settle(self, row: RolloutRow, outcomes: dict[str, tuple[str, str | None]]) -> None:
        self.store.set_rollout_nodes(row.id, outcomes, self.clock())
        for node, (state, why) in outcomes.items():
            log.info("rollout %d: node %s %s%s", row.id, node, state, f" ({why})" if why else "")
        self.reload()
        self._wake.set()

    # ------------------------------------------------------------ steering

    def resume(self) -> RolloutRow:
        """Go on with a paused or halted rollout. Resuming a halted one accepts the
        failures it halted for: it halts again only when more than ``max_failures``
        nodes fail after them."""
        row = self._require(State.PAUSED, State.HALTED)
        settings = dict(row.settings, resumed=True, accepted_failures=len(failures(row)))
        self.store.set_rollout_state(row.id, State.RUNNING, self.clock(), settings=settings)
        return self._changed()

    def abort(self, why: str) -> RolloutRow:
        row = self._require(*ACTIVE)
        self.store.set_rollout_state(row.id, State.ABORTED, self.clock(), why)
        return self._changed()

    def reached(self) -> tuple[RolloutRow, list[str]]:
        """The rollout to roll back and the nodes it reached (any state but waiting)."""
        row = self._current
        if row is None:
            raise SettingsError("no rollout of the latest revision to roll back")
        return row, [n.node for n in row.nodes if n.state != WAITING]

    def _require(self, *states: State) -> RolloutRow:
        row = self._current
        if row is None:
            raise SettingsError("there is no rollout of the latest revision")
        if row.state not in states:
            raise SettingsError(
                f"rollout {row.id} is {row.state}; that needs it "
                + " or ".join(str(s) for s in states)
            )
        return row

    def _changed(self) -> RolloutRow:
        row = self.reload()
        assert row is not None
        self._wake.set()
        return row

    # ------------------------------------------------------------ driving

    def start(self) -> None:
        """Drive rollouts until :meth:`close` (call on the server's loop)."""
        self.recover()
        self._task = asyncio.create_task(self._drive(), name="plumb-rollouts")

    def recover(self) -> dict[str, tuple[str, str | None]]:
        """Outcomes a crash lost: a node sent its batch that reported the revision before the
        server went down, and was not marked for it (it will not report it again until its
        next run). Taken from what the store holds of its newest report; the outcomes set."""
        row = self.reload()
        if row is None or row.state not in ACTIVE:
            return {}
        sent = {n.node for n in row.nodes if n.state == SENT}
        reported = {
            n.name
            for n in self.store.list_nodes()
            if n.name in sent and n.status_revision == row.revision
        }
        if not reported:
            return {}
        broken: dict[str, list[str]] = {}
        for status in self.store.statuses():
            if status.node in reported and status.status is Status.FAILED:
                broken.setdefault(status.node, []).append(status.resource_id)
        outcomes: dict[str, tuple[str, str | None]] = {
            node: (
                FAILED,
                f"its run of revision {row.revision} failed: {', '.join(broken[node][:5])}",
            )
            if node in broken
            else (SUCCEEDED, None)
            for node in sorted(reported)
        }
        self._settle(row, outcomes)
        return outcomes

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def poke(self) -> None:
        """Something changed (a push stored a rollout): look again."""
        self.reload()
        self._wake.set()

    async def _drive(self) -> None:
        while True:
            # Cleared before the step: what happens during it wakes the next one.
            self._wake.clear()
            try:
                wait = await self._step()
            except Exception:  # one bad step must not end every rollout to come
                log.exception("rollout step failed; trying again")
                wait = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _step(self) -> float | None:
        """Move the current rollout on as far as it goes now; how long until it needs a look
        again by itself (a batch's deadline), None: only when something happens."""
        row = await asyncio.to_thread(self.reload)
        if row is None or row.state != State.RUNNING:
            return None
        now = self.clock()
        timeout = float(row.settings.get("batch_timeout_s", DEFAULT_BATCH_TIMEOUT_S))
        late = {
            n.node: (FAILED, f"it did not report revision {row.revision} within {timeout:g} s")
            for n in row.nodes
            if n.state == SENT and (n.sent_at or now) + timeout <= now
        }
        if late:
            await asyncio.to_thread(self.store.set_rollout_nodes, row.id, late, now)
            row = await asyncio.to_thread(self.reload)
            assert row is not None
        failed = failures(row)
        accepted = int(row.settings.get("accepted_failures", 0))  # by a resume
        if len(failed) - accepted > row.max_failures:
            allowed = row.max_failures + accepted
            which = "; ".join(f"{n.node}: {n.reason}" for n in failed[:5])
            why = f"{len(failed)} node(s) failed, more than the {allowed} allowed: {which}"
            log.warning("rollout %d halted: %s", row.id, why)
            await asyncio.to_thread(self.store.set_rollout_state, row.id, State.HALTED, now, why)
            self.reload()
            return None
        in_flight = [n for n in row.nodes if n.state == SENT]
        if in_flight:
            return max(0.05, min((n.sent_at or now) + timeout for n in in_flight) - now)
        waiting = [n for n in row.nodes if n.state == WAITING]
        if not waiting:
            await asyncio.to_thread(self.store.set_rollout_state, row.id, State.DONE, now)
            log.info("rollout %d of revision %d done", row.id, row.revision)
            self.reload()
            return None
        batch = min(n.batch for n in waiting)
        canary_done = batch == 1 and row.settings.get("canary")
        if (
            canary_done
            and row.settings.get("pause_after_canary")
            and not row.settings.get("resumed")
        ):
            why = "the canary batch is done: 'plumb rollout resume' sends the next batch"
            await asyncio.to_thread(self.store.set_rollout_state, row.id, State.PAUSED, now, why)
            self.reload()
            return None
        await self._send([n.node for n in waiting if n.batch == batch], row)
        return timeout

    async def _send(self, nodes: list[str], row: RolloutRow) -> None:
        """Hand ``nodes`` the new revision: marked sent first (so a node connecting now
        gets it), then sent to those connected."""
        now = self.clock()
        await asyncio.to_thread(
            self.store.set_rollout_nodes, row.id, dict.fromkeys(nodes, (SENT, None)), now
        )
        self.reload()
        log.info("rollout %d: batch of %d node(s): %s", row.id, len(nodes), ", ".join(nodes))
        connected = [n for n in nodes if self.hub.connected(n)]
        signed = await asyncio.to_thread(lambda: {n: self.sign(n) for n in connected})
        catalogs = {n: c for n, c in signed.items() if c is not None}
        if self.given is not None:
            self.given.remember({(n, c.revision): Given.of(c.payload) for n, c in catalogs.items()})
        await self.hub.deliver(catalogs, (), 0)
