"""The engine, over fake kinds that keep their "system" in a dict.

Most cases are rows of one table (catalog, system before, mode → statuses,
errors, apply order, system after) run by one parametrized runner; what does
not fit a row (logging, timing, the real ``file`` kind) has its own test.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent import engine
from modules import base, registry
from modules.base import Change, Context, Identity, Kind, Mode, Status
from modules.catalog import CatalogResource
from modules.errors import ApplyError, Busy, ReadError, SpecError, Unavailable
from modules.executor import Executor
from tests.integration.harness import wait_for

FAULTS = (
    "",
    "read_error",
    "unavailable",
    "bug",
    "apply_error",
    "stuck",
    "restore_error",
    "refresh_error",
    "refresh_bug",
    "batch_bug",
    "describe_bug",
)


@dataclasses.dataclass(frozen=True)
class MemSpec:
    key: str
    value: str
    fault: str = ""  # one of FAULTS: how this resource misbehaves
    needs: str = ""  # a key that must exist in the system for read to work


class Memory(Kind[MemSpec, "str | None"]):
    """A kind whose system is a dict; records every read and apply."""

    name = "mem"

    def __init__(self, system: dict[str, str]) -> None:
        self.system = system
        self.reads: list[str] = []
        self.applied: list[str] = []

    def parse(self, raw: Mapping[str, Any]) -> MemSpec:
        for field in ("key", "value"):
            if not isinstance(raw.get(field), str):
                raise SpecError(field, "expected a string")
        if raw.get("fault", "") not in FAULTS:
            raise SpecError("fault", f"expected one of {FAULTS}")
        return MemSpec(**raw)

    def identities(self, spec: MemSpec) -> tuple[Identity, ...]:
        return (Identity("memory key", spec.key),)

    def read(self, ctx: Context, spec: MemSpec) -> str | None:
        self.reads.append(spec.key)
        if spec.fault == "read_error":
            raise ReadError("cannot read", output="permission denied\n")
        if spec.fault == "unavailable":
            raise Unavailable("memctl not found")
        if spec.fault == "bug":
            raise RuntimeError("boom")
        if spec.needs and spec.needs not in self.system:
            raise ReadError(f"{spec.needs} does not exist")
        return self.system.get(spec.key)

    def diff(self, spec: MemSpec, state: str | None) -> list[Change]:
        return [] if state == spec.value else [Change("value", state or "absent", spec.value)]

    def apply(self, ctx: Context, spec: MemSpec, state: str | None, changes: list[Change]) -> None:
        self.applied.append(spec.key)
        if spec.fault == "apply_error":
            raise ApplyError("cannot write", output="disk full")
        if spec.fault != "stuck":  # a stuck resource claims success but changes nothing
            self.system[spec.key] = spec.value


class Risky(Memory, base.Risky[MemSpec, "str | None"]):
    """The same dict "system", but a kind whose changes may cut the agent off (a firewall)."""

    name = "net"

    def __init__(self, memory: Memory) -> None:
        super().__init__(memory.system)
        self.reads, self.applied = memory.reads, memory.applied  # one log, in order
        self.restored: list[tuple[str, str | None]] = []

    def restore(self, ctx: Context, spec: MemSpec, snapshot: str | None) -> None:
        self.restored.append((spec.key, snapshot))
        if spec.fault == "restore_error":
            raise ApplyError("cannot restore", output="table busy")
        if snapshot is None:
            self.system.pop(spec.key, None)
        else:
            self.system[spec.key] = snapshot


class Service(Memory, base.Refreshable[MemSpec]):
    """The same dict "system", but a refreshable kind (a service that restarts).

    Like a real service it need not restart when this run already applied a
    change to it (it was just started): it then returns None. Each refresh is
    logged in the shared apply log as ``↻key``, so the cases show where in the
    run it happened, and with the ``applied`` it got in ``refreshed``.
    """

    name = "svc"

    def __init__(self, memory: Memory) -> None:
        super().__init__(memory.system)
        self.reads, self.applied = memory.reads, memory.applied
        self.refreshed: list[tuple[str, list[str]]] = []
        self.described: list[tuple[str, str | None]] = []

    def refresh(self, ctx: Context, spec: MemSpec, applied: Sequence[Change]) -> Change | None:
        self.applied.append(f"↻{spec.key}")
        self.refreshed.append((spec.key, [str(change) for change in applied]))
        if spec.fault == "refresh_error":
            raise ApplyError("systemctl restart failed", output="unit entered failed state")
        if spec.fault == "refresh_bug":
            raise RuntimeError("kaboom")
        return None if applied else Change("restart", "running", "restarted")

    def describe(self, ctx: Context, spec: MemSpec, state: str | None) -> dict[str, str]:
        """What a report shows of it: the state it was given (logged in ``described``)."""
        self.described.append((spec.key, state))
        if spec.fault == "describe_bug":
            raise RuntimeError("no such process")
        return {"value": state or "absent"}


class Batched(Memory, base.Batchable[MemSpec, "str | None"]):
    """The same dict "system", but a batchable kind (packages: one transaction for several).

    Each batch is logged in the shared apply log as its keys joined by ``+``
    (``"a+b"``), so the cases show what went in which batch, and when. Like
    dnf removing and then installing, a batch is not atomic: it writes its
    items in order and stops at the first bad one.
    """

    name = "pkg"

    def __init__(self, memory: Memory) -> None:
        super().__init__(memory.system)
        self.reads, self.applied = memory.reads, memory.applied

    def apply_batch(
        self, ctx: Context, items: Sequence[tuple[MemSpec, str | None, list[Change]]]
    ) -> None:
        self.applied.append("+".join(spec.key for spec, _, _ in items))
        if any(spec.fault == "batch_bug" for spec, _, _ in items):
            raise RuntimeError("batch boom")
        for spec, _, _ in items:
            if spec.fault == "apply_error":
                raise ApplyError("transaction failed", output=f"E: Unable to locate {spec.key}")
            if spec.fault != "stuck":
                self.system[spec.key] = spec.value

    def describe(self, ctx: Context, spec: MemSpec, state: str | None) -> dict[str, str]:
        return {"installed": state or "absent"}


def resource(
    kind: str,
    key: str,
    value: str = "1",
    *,
    require: tuple[str, ...] = (),
    subscribe: tuple[str, ...] = (),
    mode: Mode = Mode.ENFORCE,
    **spec: str,
) -> CatalogResource:
    """A catalog resource of one of the fake kinds; ``require`` takes ids, or keys of the
    same kind."""
    return CatalogResource(
        kind=kind,
        name=key,
        spec={"key": key, "value": value, **spec},
        mode=mode,
        require=tuple(r if "/" in r else f"{kind}/{r}" for r in require),
        subscribe=subscribe,
    )


mem = functools.partial(resource, "mem")  # the plain fake kind
svc = functools.partial(resource, "svc")  # refreshable
pkg = functools.partial(resource, "pkg")  # batchable
net = functools.partial(resource, "net")  # risky


def other(kind: str, name: str) -> CatalogResource:
    return CatalogResource(kind=kind, name=name, spec={})


@dataclasses.dataclass
class Fake:
    """The fake system and the lookup the engine gets instead of the registry."""

    memory: Memory
    risky: Risky
    service: Service
    batched: Batched
    confirms: list[bool] | None = None  # what confirm answers, in order; None: no confirm
    confirm_calls: int = 0

    def kinds(self, name: str) -> Kind[Any, Any]:
        if name == "mem":
            return self.memory
        if name == "net":
            return self.risky
        if name == "svc":
            return self.service
        if name == "pkg":
            return self.batched
        if name == "broken":
            raise ImportError("cannot import modules.broken")
        raise SpecError("kind", f"unknown kind {name!r}")

    def confirm(self) -> bool:
        """The next scripted answer; an unscripted call answers False (and the count tells)."""
        assert self.confirms is not None
        self.confirm_calls += 1
        return self.confirm_calls <= len(self.confirms) and self.confirms[self.confirm_calls - 1]

    def run(
        self,
        catalog: list[CatalogResource],
        noop: bool = False,
        hold: frozenset[str] = frozenset(),
    ) -> list[engine.ResourceResult]:
        ctx = Context(log=logging.getLogger("test.engine"))
        confirm = self.confirm if self.confirms is not None else None
        # What the runner holds a reverted resource with (agent/runner.py).
        held = dict.fromkeys(
            hold, "held: reverted earlier at revision 7; waiting for a new catalog"
        )
        return engine.run(catalog, ctx, noop=noop, kinds=self.kinds, confirm=confirm, hold=held)


def fake(system: dict[str, str] | None = None, confirms: list[bool] | None = None) -> Fake:
    memory = Memory(dict(system or {}))
    return Fake(memory, Risky(memory), Service(memory), Batched(memory), confirms)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    catalog: list[CatalogResource]
    status: dict[str, Status]  # by key (for mem) or id; every resource
    system: dict[str, str] = dataclasses.field(default_factory=dict)
    noop: bool = False
    errors: dict[str, str] = dataclasses.field(default_factory=dict)  # substring of error
    changes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    applied: list[str] = dataclasses.field(default_factory=list)  # apply order
    after: dict[str, str] | None = None  # system after the run; None: unchanged
    reads: list[str] | None = None  # read order, when it matters
    confirms: list[bool] | None = None  # confirm's answers, all asked for; None: no confirm
    hold: frozenset[str] = frozenset()
    restored: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    reverted: frozenset[str] = frozenset()  # ids whose result says reverted
    refreshed: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
    # by key or id, what each result says was observed (those that say anything);
    # None: not checked
    observed: dict[str, dict[str, str]] | None = None
    described: list[tuple[str, str | None]] | None = None  # describe's calls; None: not checked


S = Status
CASES = [
    Case(
        "converged: in_sync, apply never called",
        [mem("a", "1"), mem("b", "2", require=("a",))],
        {"a": S.IN_SYNC, "b": S.IN_SYNC},
        system={"a": "1", "b": "2"},
    ),
    Case(
        "enforce repairs and reports the original changes",
        [mem("a", "1"), mem("b", "2")],
        {"a": S.REPAIRED, "b": S.REPAIRED},
        system={"b": "0"},
        changes={"a": ["value: absent → 1"], "b": ["value: 0 → 2"]},
        applied=["a", "b"],
        after={"a": "1", "b": "2"},
    ),
    Case(
        "require orders apply; results stay in catalog order",
        [mem("c", require=("b",)), mem("b", require=("a",)), mem("a")],
        {"a": S.REPAIRED, "b": S.REPAIRED, "c": S.REPAIRED},
        applied=["a", "b", "c"],
        after={"a": "1", "b": "1", "c": "1"},
    ),
    Case(
        "ties go to the earliest ready resource in catalog order",
        [mem("x"), mem("y", require=("z",)), mem("z"), mem("w")],
        {"x": S.REPAIRED, "y": S.REPAIRED, "z": S.REPAIRED, "w": S.REPAIRED},
        applied=["x", "z", "y", "w"],
        after={"x": "1", "y": "1", "z": "1", "w": "1"},
    ),
    Case(
        "noop: drifted, nothing applied",
        [mem("a", "1"), mem("b", "2", fault="apply_error"), mem("c", "3")],
        {"a": S.DRIFTED, "b": S.DRIFTED, "c": S.IN_SYNC},
        system={"a": "0", "c": "3"},
        noop=True,
        changes={"a": ["value: 0 → 1"], "b": ["value: absent → 2"]},
    ),
    Case(
        "audit resource drifted, enforce neighbour repaired",
        [mem("a", "1", mode=Mode.AUDIT), mem("b", "2")],
        {"a": S.DRIFTED, "b": S.REPAIRED},
        system={"a": "0"},
        changes={"a": ["value: 0 → 1"]},
        applied=["b"],
        after={"a": "0", "b": "2"},
    ),
    Case(
        "an enforce resource requiring a drifted audit one is still enforced",
        [mem("a", mode=Mode.AUDIT), mem("b", require=("a",))],
        {"a": S.DRIFTED, "b": S.REPAIRED},
        applied=["b"],
        after={"b": "1"},
    ),
    Case(
        "failed apply: dependents skipped transitively, unrelated still applied",
        [
            mem("a", fault="apply_error"),
            mem("b", require=("a",)),
            mem("c", require=("b",)),
            mem("d"),
        ],
        {"a": S.FAILED, "b": S.SKIPPED, "c": S.SKIPPED, "d": S.REPAIRED},
        errors={
            "a": "cannot write: disk full",
            "b": "requires mem/a, which failed",
            "c": "requires mem/b, which was skipped: requires mem/a, which failed",
        },
        changes={"a": ["value: absent → 1"]},
        applied=["a", "d"],
        after={"d": "1"},
        reads=["a", "d", "d"],  # d read again to verify
    ),
    Case(
        "each blocking requirement is named",
        [mem("a", fault="read_error"), mem("b", fault="bug"), mem("c", require=("a", "b"))],
        {"a": S.FAILED, "b": S.FAILED, "c": S.SKIPPED},
        errors={"c": "requires mem/a, which failed; requires mem/b, which failed"},
    ),
    Case(
        "apply that changes nothing fails verification",
        [mem("a", "1", fault="stuck"), mem("b", require=("a",))],
        {"a": S.FAILED, "b": S.SKIPPED},
        errors={"a": "still differs after apply: value: absent → 1"},
        changes={"a": ["value: absent → 1"]},
        applied=["a"],
    ),
    Case(
        "unknown kind: failed, dependents skipped",
        [other("nope", "x"), mem("a", require=()), other("broken", "y")],
        {"nope/x": S.FAILED, "a": S.REPAIRED, "broken/y": S.FAILED},
        errors={"nope/x": "kind: unknown kind 'nope'", "broken/y": "ImportError: cannot import"},
        applied=["a"],
        after={"a": "1"},
    ),
    Case(
        "spec error: failed with the field, nothing read",
        [CatalogResource("mem", "a", {"key": "a", "value": 1}), mem("b")],
        {"a": S.FAILED, "b": S.REPAIRED},
        errors={"a": "value: expected a string"},
        applied=["b"],
        after={"b": "1"},
        reads=["b", "b"],
    ),
    Case(
        "unexpected exception is isolated and reported with its type",
        [mem("a", fault="bug"), mem("b")],
        {"a": S.FAILED, "b": S.REPAIRED},
        errors={"a": "RuntimeError: boom"},
        applied=["b"],
        after={"b": "1"},
    ),
    Case(
        "unavailable: failed with the reason, never skipped silently",
        [mem("a", fault="unavailable")],
        {"a": S.FAILED},
        noop=True,
        errors={"a": "unavailable: memctl not found"},
    ),
    Case(
        "read error: failed with the command output",
        [mem("a", fault="read_error")],
        {"a": S.FAILED},
        errors={"a": "cannot read: permission denied"},
    ),
    Case(
        "noop: a dependent that cannot be read before its requirement changes is unknown",
        [
            mem("a"),
            mem("b", require=("a",), needs="a"),
            mem("c", require=("b",)),
            mem("d", require=("b",), needs="b"),
        ],
        {"a": S.DRIFTED, "b": S.UNKNOWN, "c": S.DRIFTED, "d": S.UNKNOWN},
        noop=True,
        errors={
            "b": "a does not exist (pending changes not applied: mem/a)",
            "d": "b does not exist (pending changes not applied: mem/b)",
        },
    ),
    Case(
        "noop: in sync now but requiring a pending change is unknown, never no change",
        [mem("a"), mem("b", require=("a",))],
        {"a": S.DRIFTED, "b": S.UNKNOWN},
        system={"b": "1"},
        noop=True,
        errors={"b": "in sync now, but it requires mem/a, which a run would change first"},
    ),
    Case(
        "audit: in sync requiring a drifted audit resource says how it is now",
        [mem("a", mode=Mode.AUDIT), mem("b", require=("a",), mode=Mode.AUDIT)],
        {"a": S.DRIFTED, "b": S.IN_SYNC},
        system={"b": "1"},
    ),
    Case(
        "audit: the same unknown, in an enforce run",
        [mem("a", mode=Mode.AUDIT), mem("b", require=("a",), needs="a", mode=Mode.AUDIT)],
        {"a": S.DRIFTED, "b": S.UNKNOWN},
        errors={"b": "pending changes not applied: mem/a"},
    ),
    Case(
        "noop: a requirement that is in sync leaves a read failure failed",
        [mem("a"), mem("b", require=("a",), fault="read_error")],
        {"a": S.IN_SYNC, "b": S.FAILED},
        system={"a": "1"},
        noop=True,
    ),
    Case(
        "noop: a bug under a pending change is still failed, not unknown",
        [mem("a"), mem("b", require=("a",), fault="bug")],
        {"a": S.DRIFTED, "b": S.FAILED},
        noop=True,
        errors={"b": "RuntimeError: boom"},
    ),
    Case(
        "dangling require: every resource failed, nothing read",
        [mem("a"), mem("b", require=("x",))],
        {"a": S.FAILED, "b": S.FAILED},
        errors={
            "a": "catalog unusable: mem/b requires mem/x, which is not in the catalog",
            "b": "catalog unusable: mem/b requires mem/x",
        },
        reads=[],
    ),
    Case(
        "require cycle: every resource failed, the cycle named",
        [mem("z"), mem("a", require=("b",)), mem("b", require=("c",)), mem("c", require=("a",))],
        {"z": S.FAILED, "a": S.FAILED, "b": S.FAILED, "c": S.FAILED},
        errors={"z": "catalog unusable: require cycle: mem/a → mem/b → mem/c → mem/a"},
        reads=[],
    ),
    Case(
        "a resource requiring itself is a cycle",
        [mem("a", require=("a",))],
        {"a": S.FAILED},
        errors={"a": "require cycle: mem/a → mem/a"},
        reads=[],
    ),
    Case(
        "an id declared twice makes the catalog unusable",
        [mem("a"), mem("a", "2")],
        {"a": S.FAILED},
        errors={"a": "catalog unusable: mem/a is declared more than once"},
        reads=[],
    ),
]


CASES += [
    Case(
        "risky, confirmed before and after: repaired",
        [net("fw", "1")],
        {"net/fw": S.REPAIRED},
        system={"fw": "0"},
        confirms=[True, True],
        changes={"net/fw": ["value: 0 → 1"]},
        applied=["fw"],
        after={"fw": "1"},
    ),
    Case(
        "risky, unreachable after: restored to the snapshot, dependents skipped, others applied",
        [net("fw", "1"), mem("app", require=("net/fw",)), mem("other")],
        {"net/fw": S.FAILED, "app": S.SKIPPED, "other": S.REPAIRED},
        system={"fw": "0"},
        confirms=[True, False],
        errors={"net/fw": "reverted: lost connection to the server", "app": "net/fw, which failed"},
        changes={"net/fw": ["value: 0 → 1"]},
        applied=["fw", "other"],
        after={"fw": "0", "other": "1"},
        restored=[("fw", "0")],
        reverted=frozenset({"net/fw"}),
    ),
    Case(
        "risky, unreachable after: a resource that was absent is removed again",
        [net("fw", "1")],
        {"net/fw": S.FAILED},
        confirms=[True, False],
        errors={"net/fw": "reverted: lost connection to the server"},
        applied=["fw"],
        restored=[("fw", None)],
        reverted=frozenset({"net/fw"}),
    ),
    Case(
        "risky, each change confirmed on its own: only the one that cuts the link is reverted",
        [net("a", "1"), net("b", "2"), net("c", "3")],
        {"net/a": S.REPAIRED, "net/b": S.FAILED, "net/c": S.REPAIRED},
        confirms=[True, True, False, True],
        applied=["a", "b", "c"],
        after={"a": "1", "c": "3"},
        restored=[("b", None)],
        reverted=frozenset({"net/b"}),
    ),
    Case(
        "risky, server unreachable before the change: applied without revert, asked once",
        [net("a", "1"), net("b", "2")],
        {"net/a": S.REPAIRED, "net/b": S.REPAIRED},
        confirms=[False],
        applied=["a", "b"],
        after={"a": "1", "b": "2"},
    ),
    Case(
        "risky, restore fails too: failed, and says so loudly",
        [net("fw", "1", fault="restore_error")],
        {"net/fw": S.FAILED},
        system={"fw": "0"},
        confirms=[True, False],
        errors={"net/fw": "revert FAILED: lost connection to the server"},
        applied=["fw"],
        after={"fw": "1"},
        restored=[("fw", "0")],
        reverted=frozenset({"net/fw"}),
    ),
    Case(
        "risky, apply fails and the link is lost: reverted, naming the apply error too",
        [net("fw", "1", fault="apply_error")],
        {"net/fw": S.FAILED},
        system={"fw": "0"},
        confirms=[True, False],
        errors={"net/fw": "reverted: lost connection to the server (the change itself: failed: "},
        applied=["fw"],
        restored=[("fw", "0")],
        reverted=frozenset({"net/fw"}),
    ),
    Case(
        "no confirm asked for in-sync, non-risky or dry resources",
        [net("a", "1"), mem("b"), net("c", "3", mode=Mode.AUDIT)],
        {"net/a": S.IN_SYNC, "b": S.REPAIRED, "net/c": S.DRIFTED},
        system={"a": "1"},
        confirms=[],
        applied=["b"],
        after={"a": "1", "b": "1"},
    ),
    Case(
        "risky in a noop run: drifted, nothing asked or applied",
        [net("a", "1")],
        {"net/a": S.DRIFTED},
        noop=True,
        confirms=[],
    ),
    Case(
        "without confirm (no server), risky kinds are applied as any other",
        [net("a", "1")],
        {"net/a": S.REPAIRED},
        applied=["a"],
        after={"a": "1"},
    ),
    Case(
        "held: failed without being read or applied, dependents skipped, others applied",
        [net("fw", "1"), mem("app", require=("net/fw",)), net("ok", "2")],
        {"net/fw": S.FAILED, "app": S.SKIPPED, "net/ok": S.REPAIRED},
        confirms=[True, True],
        hold=frozenset({"net/fw"}),
        errors={
            "net/fw": "held: reverted earlier at revision 7; waiting for a new catalog",
            "app": "requires net/fw, which failed",
        },
        applied=["ok"],
        after={"ok": "2"},
        reads=["ok", "ok"],
    ),
    Case(
        "held in a noop run: evaluated dry, as nothing would be applied anyway",
        [net("fw", "1")],
        {"net/fw": S.DRIFTED},
        noop=True,
        hold=frozenset({"net/fw"}),
    ),
]


RESTARTED = "restart: running → restarted (notified by mem/conf)"
PENDING = "refresh: pending → refreshed (notified by mem/conf)"

# notify/subscribe: the catalog carries the relation as the receiver's subscribe.
CASES += [
    Case(
        "subscription repaired: an in-sync receiver is refreshed and reported repaired",
        [mem("conf"), svc("web", subscribe=("mem/conf",))],
        {"conf": S.REPAIRED, "svc/web": S.REPAIRED},
        system={"web": "1"},
        changes={"conf": ["value: absent → 1"], "svc/web": [RESTARTED]},
        applied=["conf", "↻web"],
        after={"conf": "1", "web": "1"},
        refreshed=[("web", [])],
    ),
    Case(
        "subscriptions in sync: nothing refreshed, receiver in sync",
        [mem("conf"), svc("web", subscribe=("mem/conf",))],
        {"conf": S.IN_SYNC, "svc/web": S.IN_SYNC},
        system={"conf": "1", "web": "1"},
    ),
    Case(
        "subscribe orders like require; refresh right after the receiver's own apply",
        [
            mem("after", require=("svc/web",)),
            svc("web", subscribe=("mem/conf",)),
            mem("conf"),
        ],
        {"after": S.REPAIRED, "svc/web": S.REPAIRED, "conf": S.REPAIRED},
        changes={"svc/web": ["value: absent → 1"]},
        applied=["conf", "web", "↻web", "after"],
        after={"conf": "1", "web": "1", "after": "1"},
        refreshed=[("web", ["value: absent → 1"])],  # the kind is told; just started: None
    ),
    Case(
        "receiver repaired and refreshed: its own changes first, then the refresh",
        [mem("conf"), svc("web", "2", subscribe=("mem/conf",))],
        {"conf": S.REPAIRED, "svc/web": S.REPAIRED},
        system={"web": "1"},
        changes={"svc/web": ["value: 1 → 2"]},
        applied=["conf", "web", "↻web"],
        after={"conf": "1", "web": "2"},
        refreshed=[("web", ["value: 1 → 2"])],
    ),
    Case(
        "several subscriptions changed: one refresh naming every changed one",
        [mem("a"), mem("b"), mem("c"), svc("web", subscribe=("mem/a", "mem/c", "mem/b"))],
        {"a": S.REPAIRED, "b": S.IN_SYNC, "c": S.REPAIRED, "svc/web": S.REPAIRED},
        system={"b": "1", "web": "1"},
        changes={"svc/web": ["restart: running → restarted (notified by mem/a, mem/c)"]},
        applied=["a", "c", "↻web"],
        after={"a": "1", "b": "1", "c": "1", "web": "1"},
        refreshed=[("web", [])],
    ),
    Case(
        "subscription failed: receiver skipped, not refreshed",
        [mem("conf", fault="apply_error"), svc("web", subscribe=("mem/conf",))],
        {"conf": S.FAILED, "svc/web": S.SKIPPED},
        system={"web": "1"},
        errors={"svc/web": "subscribes to mem/conf, which failed"},
        applied=["conf"],
    ),
    Case(
        "subscription skipped: receiver skipped, naming why",
        [
            mem("a", fault="read_error"),
            mem("conf", require=("a",)),
            svc("web", subscribe=("mem/conf",), require=("mem/a",)),
        ],
        {"a": S.FAILED, "conf": S.SKIPPED, "svc/web": S.SKIPPED},
        errors={
            "svc/web": "requires mem/a, which failed; subscribes to mem/conf, which was skipped"
        },
        reads=["a"],
    ),
    Case(
        "receiver's own apply fails: not refreshed",
        [mem("conf"), svc("web", subscribe=("mem/conf",), fault="apply_error")],
        {"conf": S.REPAIRED, "svc/web": S.FAILED},
        errors={"svc/web": "cannot write: disk full"},
        applied=["conf", "web"],
        after={"conf": "1"},
    ),
    Case(
        "refresh raises a ModuleError: receiver failed with it, its dependents skipped",
        [
            mem("conf"),
            svc("web", subscribe=("mem/conf",), fault="refresh_error"),
            mem("after", require=("svc/web",)),
        ],
        {"conf": S.REPAIRED, "svc/web": S.FAILED, "after": S.SKIPPED},
        system={"web": "1"},
        errors={
            "svc/web": "refresh failed (notified by mem/conf): systemctl restart failed:"
            " unit entered failed state",
            "after": "requires svc/web, which failed",
        },
        applied=["conf", "↻web"],
        after={"conf": "1", "web": "1"},
        refreshed=[("web", [])],
    ),
    Case(
        "refresh has a bug: failed with its type, keeping the changes applied",
        [mem("conf"), svc("web", "2", subscribe=("mem/conf",), fault="refresh_bug")],
        {"conf": S.REPAIRED, "svc/web": S.FAILED},
        system={"web": "1"},
        errors={"svc/web": "refresh failed (notified by mem/conf): RuntimeError: kaboom"},
        changes={"svc/web": ["value: 1 → 2"]},
        applied=["conf", "web", "↻web"],
        after={"conf": "1", "web": "2"},
        refreshed=[("web", ["value: 1 → 2"])],
    ),
    Case(
        "noop: a pending refresh makes an in-sync receiver drifted, nothing refreshed",
        [mem("conf"), svc("web", subscribe=("mem/conf",))],
        {"conf": S.DRIFTED, "svc/web": S.DRIFTED},
        system={"web": "1"},
        noop=True,
        changes={"svc/web": [PENDING]},
    ),
    Case(
        "noop: a drifted receiver lists its own changes, then the pending refresh",
        [mem("conf"), svc("web", "2", subscribe=("mem/conf",))],
        {"conf": S.DRIFTED, "svc/web": S.DRIFTED},
        system={"web": "1"},
        noop=True,
        changes={"svc/web": ["value: 1 → 2", PENDING]},
    ),
    Case(
        "noop: subscriptions in sync, no refresh pending",
        [mem("conf"), svc("web", subscribe=("mem/conf",))],
        {"conf": S.IN_SYNC, "svc/web": S.IN_SYNC},
        system={"conf": "1", "web": "1"},
        noop=True,
    ),
    Case(
        "noop: a receiver that cannot be evaluated stays unknown",
        [mem("conf"), svc("web", subscribe=("mem/conf",), needs="conf")],
        {"conf": S.DRIFTED, "svc/web": S.UNKNOWN},
        noop=True,
        errors={"svc/web": "pending changes not applied: mem/conf"},
    ),
    Case(
        "audit receiver: its subscription is repaired, the refresh only reported pending",
        [mem("conf"), svc("web", subscribe=("mem/conf",), mode=Mode.AUDIT)],
        {"conf": S.REPAIRED, "svc/web": S.DRIFTED},
        system={"web": "1"},
        changes={"svc/web": [PENDING]},
        applied=["conf"],
        after={"conf": "1", "web": "1"},
    ),
    Case(
        "audit subscription only drifted: the enforce receiver is drifted, not refreshed",
        [mem("conf", mode=Mode.AUDIT), svc("web", subscribe=("mem/conf",))],
        {"conf": S.DRIFTED, "svc/web": S.DRIFTED},
        system={"web": "1"},
        changes={"svc/web": [PENDING]},
    ),
    Case(
        "one subscription repaired, another only drifted: refreshed, naming the repaired one",
        [mem("conf"), mem("tls", mode=Mode.AUDIT), svc("web", subscribe=("mem/tls", "mem/conf"))],
        {"conf": S.REPAIRED, "tls": S.DRIFTED, "svc/web": S.REPAIRED},
        system={"web": "1"},
        changes={"svc/web": [RESTARTED]},
        applied=["conf", "↻web"],
        after={"conf": "1", "web": "1"},
        refreshed=[("web", [])],
    ),
    Case(
        "risky subscription reverted: counts as failed, receiver skipped, not refreshed",
        [net("fw", "1"), svc("web", subscribe=("net/fw",))],
        {"net/fw": S.FAILED, "svc/web": S.SKIPPED},
        system={"fw": "0", "web": "1"},
        confirms=[True, False],
        errors={"svc/web": "subscribes to net/fw, which failed"},
        changes={"net/fw": ["value: 0 → 1"]},
        applied=["fw"],
        restored=[("fw", "0")],
        reverted=frozenset({"net/fw"}),
    ),
    Case(
        "risky subscription confirmed: receiver refreshed",
        [net("fw", "1"), svc("web", subscribe=("net/fw",))],
        {"net/fw": S.REPAIRED, "svc/web": S.REPAIRED},
        system={"fw": "0", "web": "1"},
        confirms=[True, True],
        changes={"svc/web": ["restart: running → restarted (notified by net/fw)"]},
        applied=["fw", "↻web"],
        after={"fw": "1", "web": "1"},
        refreshed=[("web", [])],
    ),
    Case(
        "held subscription: receiver skipped",
        [net("fw", "1"), svc("web", subscribe=("net/fw",))],
        {"net/fw": S.FAILED, "svc/web": S.SKIPPED},
        system={"web": "1"},
        hold=frozenset({"net/fw"}),
        errors={"svc/web": "subscribes to net/fw, which failed"},
        reads=[],
    ),
    Case(
        "held receiver: failed, not refreshed",
        [mem("conf"), svc("web", subscribe=("mem/conf",))],
        {"conf": S.REPAIRED, "svc/web": S.FAILED},
        system={"web": "1"},
        hold=frozenset({"svc/web"}),
        errors={"svc/web": "held: reverted earlier at revision 7"},
        applied=["conf"],
        after={"conf": "1", "web": "1"},
    ),
    Case(
        "a receiver whose kind cannot be refreshed (stale catalog) fails, saying so",
        [mem("conf"), mem("b", subscribe=("mem/conf",))],
        {"conf": S.REPAIRED, "b": S.FAILED},
        errors={"b": "cannot refresh (notified by mem/conf): kind 'mem' is not refreshable"},
        applied=["conf", "b"],
        after={"conf": "1", "b": "1"},
    ),
    Case(
        "dangling subscribe: every resource failed, nothing read",
        [mem("a"), svc("web", subscribe=("mem/x",))],
        {"a": S.FAILED, "svc/web": S.FAILED},
        errors={"a": "catalog unusable: svc/web subscribes to mem/x, which is not in the catalog"},
        reads=[],
    ),
    Case(
        "a cycle through subscribe is named as such",
        [mem("a", require=("svc/web",)), svc("web", subscribe=("mem/a",))],
        {"a": S.FAILED, "svc/web": S.FAILED},
        errors={"a": "catalog unusable: require/subscribe cycle: mem/a → svc/web → mem/a"},
        reads=[],
    ),
]


# Batches: the apply log shows each apply_batch call as its keys joined by "+".
CASES += [
    Case(
        "batchable: the kind's enforce resources in one apply_batch, each verified alone",
        [pkg("a"), pkg("b", "2"), pkg("c")],
        {"pkg/a": S.REPAIRED, "pkg/b": S.REPAIRED, "pkg/c": S.IN_SYNC},
        system={"b": "0", "c": "1"},
        changes={"pkg/a": ["value: absent → 1"], "pkg/b": ["value: 0 → 2"], "pkg/c": []},
        applied=["a+b"],
        after={"a": "1", "b": "2", "c": "1"},
        reads=["a", "b", "c", "a", "b"],
        observed={
            "pkg/a": {"installed": "1"},
            "pkg/b": {"installed": "2"},
            "pkg/c": {"installed": "1"},
        },
    ),
    Case(
        "batch: gathered early past others; one waiting on a later resource keeps its place",
        [pkg("a"), mem("x"), pkg("b", require=("mem/x",)), pkg("c")],
        {"pkg/a": S.REPAIRED, "x": S.REPAIRED, "pkg/b": S.REPAIRED, "pkg/c": S.REPAIRED},
        applied=["a+c", "x", "b"],
        after={"a": "1", "x": "1", "b": "1", "c": "1"},
    ),
    Case(
        "batch: a resource requiring a batched one is not in its batch",
        [pkg("a"), pkg("b", require=("pkg/a",)), pkg("c"), pkg("d", subscribe=("pkg/c",))],
        {"pkg/a": S.REPAIRED, "pkg/b": S.REPAIRED, "pkg/c": S.REPAIRED, "pkg/d": S.FAILED},
        errors={"pkg/d": "cannot refresh (notified by pkg/c): kind 'pkg' is not refreshable"},
        applied=["a+c", "b+d"],
        after={"a": "1", "b": "1", "c": "1", "d": "1"},
    ),
    Case(
        "batch: a lone change gets apply, not apply_batch",
        [pkg("a"), pkg("b")],
        {"pkg/a": S.REPAIRED, "pkg/b": S.IN_SYNC},
        system={"b": "1"},
        applied=["a"],
        after={"a": "1", "b": "1"},
    ),
    Case(
        "batch: a resource whose requirement failed is skipped, not batched",
        [mem("x", fault="apply_error"), pkg("a"), pkg("b", require=("mem/x",)), pkg("c")],
        {"x": S.FAILED, "pkg/a": S.REPAIRED, "pkg/b": S.SKIPPED, "pkg/c": S.REPAIRED},
        errors={"pkg/b": "requires mem/x, which failed"},
        applied=["x", "a+c"],
        after={"a": "1", "c": "1"},
    ),
    Case(
        "batch: never in a noop run",
        [pkg("a"), pkg("b")],
        {"pkg/a": S.DRIFTED, "pkg/b": S.DRIFTED},
        noop=True,
        observed={"pkg/a": {"installed": "absent"}, "pkg/b": {"installed": "absent"}},
    ),
    Case(
        "batch: audit resources stay out, enforce ones are batched",
        [pkg("a", mode=Mode.AUDIT), pkg("b"), pkg("c")],
        {"pkg/a": S.DRIFTED, "pkg/b": S.REPAIRED, "pkg/c": S.REPAIRED},
        applied=["b+c"],
        after={"b": "1", "c": "1"},
    ),
    Case(
        "batch: held resources stay out",
        [pkg("a"), pkg("b"), pkg("c")],
        {"pkg/a": S.REPAIRED, "pkg/b": S.FAILED, "pkg/c": S.REPAIRED},
        hold=frozenset({"pkg/b"}),
        errors={"pkg/b": "held: reverted earlier at revision 7"},
        applied=["a+c"],
        after={"a": "1", "c": "1"},
    ),
    Case(
        "batch fails: read again and applied one by one; the bad one fails alone",
        [pkg("a"), pkg("b", fault="apply_error"), pkg("c"), pkg("d", require=("pkg/b",))],
        {"pkg/a": S.REPAIRED, "pkg/b": S.FAILED, "pkg/c": S.REPAIRED, "pkg/d": S.SKIPPED},
        errors={"pkg/b": "cannot write: disk full", "pkg/d": "requires pkg/b, which failed"},
        changes={"pkg/a": ["value: absent → 1"], "pkg/b": ["value: absent → 1"]},
        applied=["a+b+c", "b", "c"],  # the batch wrote a before failing: a needs no retry
        after={"a": "1", "c": "1"},
        reads=["a", "b", "c", "a", "b", "c", "c"],
        observed={"pkg/a": {"installed": "1"}, "pkg/c": {"installed": "1"}},
    ),
    Case(
        "batch: one that did not converge fails verification alone",
        [pkg("a", fault="stuck"), pkg("b")],
        {"pkg/a": S.FAILED, "pkg/b": S.REPAIRED},
        errors={"pkg/a": "still differs after apply: value: absent → 1"},
        applied=["a+b"],
        after={"b": "1"},
        observed={"pkg/a": {"installed": "absent"}, "pkg/b": {"installed": "1"}},
    ),
    Case(
        "batch: parse and read errors fail alone, the rest is batched",
        [
            pkg("a", fault="read_error"),
            CatalogResource("pkg", "z", {"key": "z", "value": 1}),
            pkg("b"),
            pkg("c"),
        ],
        {"pkg/a": S.FAILED, "pkg/z": S.FAILED, "pkg/b": S.REPAIRED, "pkg/c": S.REPAIRED},
        errors={"pkg/a": "cannot read: permission denied", "pkg/z": "value: expected a string"},
        applied=["b+c"],
        after={"b": "1", "c": "1"},
    ),
    Case(
        "batch: a bug in apply_batch fails the whole batch, without a retry",
        [pkg("a"), pkg("b", fault="batch_bug"), pkg("c", require=("pkg/a",))],
        {"pkg/a": S.FAILED, "pkg/b": S.FAILED, "pkg/c": S.SKIPPED},
        errors={"pkg/a": "RuntimeError: batch boom (in a batch with pkg/a, pkg/b)"},
        changes={"pkg/a": ["value: absent → 1"]},
        applied=["a+b"],
        observed={},
    ),
    Case(
        "batch: a repaired resource of the batch still notifies its subscribers",
        [pkg("a"), pkg("b"), svc("web", subscribe=("pkg/a",))],
        {"pkg/a": S.REPAIRED, "pkg/b": S.REPAIRED, "svc/web": S.REPAIRED},
        system={"web": "1"},
        changes={"svc/web": ["restart: running → restarted (notified by pkg/a)"]},
        applied=["a+b", "↻web"],
        after={"a": "1", "b": "1", "web": "1"},
        refreshed=[("web", [])],
    ),
    Case(
        "batch: confirm-or-revert still guards risky resources around it, one at a time",
        [net("fw"), pkg("a", require=("net/fw",)), pkg("b"), pkg("c", require=("net/fw",))],
        {"net/fw": S.FAILED, "pkg/a": S.SKIPPED, "pkg/b": S.REPAIRED, "pkg/c": S.SKIPPED},
        confirms=[True, False],
        applied=["fw", "b"],
        after={"b": "1"},
        restored=[("fw", None)],
        reverted=frozenset({"net/fw"}),
    ),
]

# observed: what describe makes of the newest state read of each resource.
CASES += [
    Case(
        "observed: the state verified after the apply, not the one before",
        [svc("web", "2")],
        {"svc/web": S.REPAIRED},
        system={"web": "1"},
        applied=["web"],
        after={"web": "2"},
        observed={"svc/web": {"value": "2"}},
        described=[("web", "2")],
    ),
    Case(
        "observed: in sync and dry resources are described as read",
        [svc("a"), svc("b", "2", mode=Mode.AUDIT)],
        {"svc/a": S.IN_SYNC, "svc/b": S.DRIFTED},
        system={"a": "1", "b": "1"},
        observed={"svc/a": {"value": "1"}, "svc/b": {"value": "1"}},
        described=[("a", "1"), ("b", "1")],
    ),
    Case(
        "observed: after a refresh the resource is read again (a restart is a new process)",
        [mem("conf"), svc("web", subscribe=("mem/conf",))],
        {"conf": S.REPAIRED, "svc/web": S.REPAIRED},
        system={"web": "1"},
        applied=["conf", "↻web"],
        after={"conf": "1", "web": "1"},
        reads=["conf", "conf", "web", "web"],
        refreshed=[("web", [])],
        observed={"svc/web": {"value": "1"}},
        described=[("web", "1")],
    ),
    Case(
        "observed: nothing when no current state was read (read or apply failed, skipped)",
        [
            svc("a", fault="read_error"),
            svc("b", fault="apply_error"),
            svc("c", require=("svc/b",)),
        ],
        {"svc/a": S.FAILED, "svc/b": S.FAILED, "svc/c": S.SKIPPED},
        applied=["b"],
        observed={},
        described=[],
    ),
    Case(
        "observed: a describe that raises leaves the resource's status alone",
        [svc("web", fault="describe_bug"), mem("after", require=("svc/web",))],
        {"svc/web": S.REPAIRED, "after": S.REPAIRED},
        applied=["web", "after"],
        after={"web": "1", "after": "1"},
        observed={},
        described=[("web", "1")],
    ),
]


def _id(key: str) -> str:
    return key if "/" in key else f"mem/{key}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_engine(case: Case) -> None:
    system = fake(case.system, case.confirms)
    results = system.run(case.catalog, noop=case.noop, hold=case.hold)

    assert [r.id for r in results] == [r.id for r in case.catalog]
    assert {r.id: r.status for r in results} == {_id(k): s for k, s in case.status.items()}
    by_id = {r.id: r for r in results}
    for key, fragment in case.errors.items():
        assert fragment in by_id[_id(key)].error
    for r in results:  # an error explains exactly the statuses that need one
        assert bool(r.error) == (r.status in (S.FAILED, S.SKIPPED, S.UNKNOWN)), r
    for key, changes in case.changes.items():
        assert [str(c) for c in by_id[_id(key)].changes] == changes
    assert system.memory.applied == case.applied
    assert system.memory.system == (case.system if case.after is None else case.after)
    if case.reads is not None:
        assert system.memory.reads == case.reads
    assert system.confirm_calls == len(case.confirms or [])
    assert system.risky.restored == case.restored
    assert {r.id for r in results if r.reverted} == case.reverted
    assert system.service.refreshed == case.refreshed
    if case.observed is not None:
        observed = {r.id: dict(r.observed) for r in results if r.observed}
        assert observed == {_id(k): v for k, v in case.observed.items()}
    if case.described is not None:
        assert system.service.described == case.described


def test_result_carries_catalog_metadata_and_duration() -> None:
    res = CatalogResource(
        "mem", "a", {"key": "a", "value": "1"}, manifest="web.yaml", controls=("CIS-1.1.1",)
    )
    ticks = itertools.count(start=10.0, step=0.25)
    ctx = Context(log=logging.getLogger("test.engine"))

    [result] = engine.run([res], ctx, kinds=fake().kinds, clock=lambda: next(ticks))

    assert result == engine.ResourceResult(
        id="mem/a",
        kind="mem",
        name="a",
        manifest="web.yaml",
        status=S.REPAIRED,
        changes=(Change("value", "absent", "1"),),
        duration_s=0.25,
        controls=("CIS-1.1.1",),
    )


def test_logs_one_line_per_resource_not_in_sync(caplog: pytest.LogCaptureFixture) -> None:
    catalog = [mem("a"), mem("b"), mem("c", fault="read_error")]
    with caplog.at_level(logging.INFO, logger="test.engine"):
        fake({"b": "1"}).run(catalog)

    assert [r.getMessage() for r in caplog.records] == [
        "mem/a: repaired (value: absent → 1)",
        "mem/c: failed (cannot read: permission denied)",
    ]


def test_bug_is_logged_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="test.engine"):
        fake().run([mem("a", fault="bug")])

    [bug] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "mem/a" in bug.getMessage()
    assert bug.exc_info is not None and isinstance(bug.exc_info[1], RuntimeError)


def test_summarize_counts_every_status() -> None:
    catalog = [mem("a"), mem("b"), mem("c", fault="apply_error"), mem("d", require=("c",))]
    results = fake({"a": "1"}).run(catalog)

    assert engine.summarize(results) == {
        "in_sync": 1,
        "repaired": 1,
        "drifted": 0,
        "failed": 1,
        "skipped": 1,
        "unknown": 0,
    }
    assert engine.summarize([]) == dict.fromkeys(Status, 0)


def test_real_file_kind(tmp_path: Path) -> None:
    pytest.importorskip("modules.file")
    ctx = Context(root=tmp_path, log=logging.getLogger("test.engine"))
    res = CatalogResource("file", "motd", {"path": "/etc/motd", "content": "hello\n"})
    target = tmp_path / "etc" / "motd"
    target.parent.mkdir()

    [created] = engine.run([res], ctx, kinds=registry.get)
    assert (created.status, target.read_text()) == (S.REPAIRED, "hello\n")

    target.write_text("changed out of band\n")
    [drifted] = engine.run([res], ctx, noop=True)
    assert drifted.status == S.DRIFTED
    assert [change.field for change in drifted.changes] == ["content"]
    assert target.read_text() == "changed out of band\n"

    [repaired] = engine.run([res], ctx)
    assert (repaired.status, target.read_text()) == (S.REPAIRED, "hello\n")
    assert engine.run([res], ctx)[0].status == S.IN_SYNC


def test_unguarded_risky_apply_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    system = fake(confirms=[False])
    with caplog.at_level(logging.INFO, logger="test.engine"):
        [result] = system.run([net("fw")])

    assert result.status is S.REPAIRED
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "net/fw: server not reachable before the change" in warning.getMessage()
    assert "without confirm-or-revert" in warning.getMessage()


def test_failed_revert_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    system = fake({"fw": "0"}, confirms=[True, False])
    with caplog.at_level(logging.INFO, logger="test.engine"):
        system.run([net("fw", fault="restore_error")])

    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "net/fw: revert FAILED" in error.getMessage()
    assert "cannot restore: table busy" in error.getMessage()


@pytest.mark.parametrize(
    ("answers", "status", "restored"),
    [
        ([], S.REPAIRED, []),  # broken before: treated as unreachable, applied unguarded
        ([True], S.FAILED, [("fw", "0")]),  # broken after: treated as unreachable, reverted
    ],
)
def test_a_confirm_that_raises_means_unreachable(
    answers: list[bool], status: Status, restored: list[tuple[str, str]]
) -> None:
    system = fake({"fw": "0"})
    calls = iter(answers)

    def confirm() -> bool:
        answer = next(calls, None)
        if answer is None:
            raise OSError("probe broke")
        return answer

    ctx = Context(log=logging.getLogger("test.engine"))
    [result] = engine.run([net("fw")], ctx, kinds=system.kinds, confirm=confirm)

    assert (result.status, system.risky.restored) == (status, restored)


def test_kinds_cannot_be_refreshed_unless_they_say_so() -> None:
    memory = fake().memory
    assert not isinstance(memory, base.Refreshable)
    assert isinstance(fake().service, base.Refreshable)


def test_a_refresh_is_logged_with_the_resource(caplog: pytest.LogCaptureFixture) -> None:
    catalog = [mem("conf"), svc("web", subscribe=("mem/conf",))]
    with caplog.at_level(logging.INFO, logger="test.engine"):
        fake({"web": "1"}).run(catalog)

    assert [r.getMessage() for r in caplog.records] == [
        "mem/conf: repaired (value: absent → 1)",
        f"svc/web: repaired ({RESTARTED})",
    ]


class Timed(Batched):
    """The batchable kind on a fake clock: a read takes 1 s, an apply 10 s, a batch 30 s."""

    def __init__(self, memory: Memory) -> None:
        super().__init__(memory)
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def read(self, ctx: Context, spec: MemSpec) -> str | None:
        self.now += 1
        return super().read(ctx, spec)

    def apply(self, ctx: Context, spec: MemSpec, state: str | None, changes: list[Change]) -> None:
        self.now += 10
        super().apply(ctx, spec, state, changes)

    def apply_batch(
        self, ctx: Context, items: Sequence[tuple[MemSpec, str | None, list[Change]]]
    ) -> None:
        self.now += 30
        super().apply_batch(ctx, items)


@pytest.mark.parametrize(
    ("catalog", "durations"),
    [
        # read + a third of the batch + verify; in sync: its read only
        ([pkg("a"), pkg("b"), pkg("c"), pkg("d", "0")], [12, 12, 12, 1]),
        # read + a third of the failed batch + read again; then b's failed apply (10),
        # c's apply and verify (11)
        ([pkg("a"), pkg("b", fault="apply_error"), pkg("c")], [12, 22, 23]),
    ],
    ids=["batch", "retried"],
)
def test_a_batch_is_timed_per_resource_with_an_even_share_of_apply_batch(
    catalog: list[CatalogResource], durations: list[float]
) -> None:
    memory = Memory({"d": "0"})
    kind = Timed(memory)
    ctx = Context(log=logging.getLogger("test.engine"))

    results = engine.run(catalog, ctx, kinds=lambda name: kind, clock=kind.clock)

    assert [r.duration_s for r in results] == durations
    assert sum(durations) == kind.now  # the shares add up to the time the run took


def test_a_failed_batch_is_logged_before_the_retry(caplog: pytest.LogCaptureFixture) -> None:
    catalog = [pkg("a"), pkg("b", fault="apply_error")]
    with caplog.at_level(logging.INFO, logger="test.engine"):
        fake().run(catalog)

    assert [r.getMessage() for r in caplog.records] == [
        "applying 2 pkg resources in one batch: pkg/a, pkg/b",
        "applying pkg/a, pkg/b in one batch failed (transaction failed: E: Unable to locate b);"
        " applying them one by one",
        "pkg/a: repaired (value: absent → 1)",
        "pkg/b: failed (value: absent → 1 | cannot write: disk full)",
    ]
    assert caplog.records[1].levelno == logging.WARNING


def test_a_describe_that_raises_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="test.engine"):
        [result] = fake({"web": "1"}).run([svc("web", fault="describe_bug")])

    assert (result.status, result.observed) == (S.IN_SYNC, {})
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "svc/web: describing it for the report failed" in warning.getMessage()
    assert warning.exc_info is not None and isinstance(warning.exc_info[1], RuntimeError)


def test_kinds_batch_and_describe_only_if_they_say_so() -> None:
    memory = fake().memory
    assert not isinstance(memory, base.Batchable)
    assert isinstance(fake().batched, base.Batchable)
    assert memory.describe(Context(), MemSpec("a", "1"), "1") == {}


def test_a_risky_kind_cannot_be_batchable() -> None:
    with pytest.raises(TypeError, match="RiskyBatch: a risky kind cannot be batchable"):

        class RiskyBatch(Risky, base.Batchable[MemSpec, "str | None"]):
            def apply_batch(
                self, ctx: Context, items: Sequence[tuple[MemSpec, str | None, list[Change]]]
            ) -> None:
                raise AssertionError("never instantiated")


# --- timeouts: real commands, killed at the resource's deadline ---------------------

GRACE_S = 0.2


@dataclasses.dataclass(frozen=True)
class CmdSpec:
    key: str
    read: str = "true"  # sh scripts: what read and apply run, for real
    apply: str = "true"


class Commands(Kind[CmdSpec, str], base.Batchable[CmdSpec, str]):
    """A kind that runs real commands through ctx.run: read prints the state, apply
    touches a marker file; applies and batches are logged in ``applied``."""

    name = "cmd"
    timeout_s = 0.6

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.applied: list[str] = []

    def parse(self, raw: Mapping[str, Any]) -> CmdSpec:
        return CmdSpec(**raw)

    def identities(self, spec: CmdSpec) -> tuple[Identity, ...]:
        return (Identity("command", spec.key),)

    def read(self, ctx: Context, spec: CmdSpec) -> str:
        ctx.run(["sh", "-c", spec.read], failure=ReadError)
        return "done" if (self.workdir / spec.key).exists() else "absent"

    def diff(self, spec: CmdSpec, state: str) -> list[Change]:
        return [] if state == "done" else [Change("state", state, "done")]

    def apply(self, ctx: Context, spec: CmdSpec, state: str, changes: list[Change]) -> None:
        self.applied.append(spec.key)
        self._run(ctx, [spec])

    def apply_batch(self, ctx: Context, items: Sequence[tuple[CmdSpec, str, list[Change]]]) -> None:
        self.applied.append("+".join(spec.key for spec, _, _ in items))
        self._run(ctx, [spec for spec, _, _ in items])

    def _run(self, ctx: Context, specs: list[CmdSpec]) -> None:
        script = "; ".join(spec.apply for spec in specs)
        result = ctx.run(["sh", "-c", script], failure=ApplyError)
        if result.returncode != 0:
            raise ApplyError("apply failed", result.stderr)
        for spec in specs:
            (self.workdir / spec.key).touch()


def cmd(key: str, timeout_s: float | None = None, **spec: str) -> CatalogResource:
    return CatalogResource("cmd", key, {"key": key, **spec}, timeout_s=timeout_s)


HANG = 'echo "started $$"; sleep 30'


def run_commands(
    tmp_path: Path, catalog: list[CatalogResource]
) -> tuple[list[engine.ResourceResult], Commands, float]:
    kind = Commands(tmp_path)
    memory = fake().memory
    ctx = Context(log=logging.getLogger("test.engine"), executor=Executor(grace_s=GRACE_S))
    began = time.monotonic()
    results = engine.run(catalog, ctx, kinds=lambda name: kind if name == "cmd" else memory)
    return results, kind, time.monotonic() - began


def test_a_hung_apply_times_out_with_its_output_and_the_run_goes_on(tmp_path: Path) -> None:
    catalog = [cmd("hangs", apply=HANG), mem("after", require=("cmd/hangs",)), mem("other")]
    results, _, took = run_commands(tmp_path, catalog)

    hung, after, other = results
    assert hung.status is S.FAILED
    assert re.fullmatch(r"sh -c .* timed out after 0\.6 s: started \d+", hung.error), hung.error
    assert hung.changes == (Change("state", "absent", "done"),)
    assert not hung.transient
    assert (after.status, other.status) == (S.SKIPPED, S.REPAIRED)
    assert took < 0.6 + GRACE_S + 1.0
    # The command's process group went with it.
    pid = int(hung.error.rsplit(" ", 1)[1])
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=2, what="the hung command to go")


def test_a_resource_timeout_overrides_its_kinds(tmp_path: Path) -> None:
    catalog = [cmd("short", 0.3, apply=HANG), cmd("default", read=HANG)]
    results, kind, _ = run_commands(tmp_path, catalog)

    assert ["timed out after 0.3 s" in r.error for r in results] == [True, False]
    assert ["timed out after 0.6 s" in r.error for r in results] == [False, True]
    assert 0.3 <= results[0].duration_s < 0.3 + GRACE_S + 1.0
    assert kind.applied == ["short"]  # a timed-out read applies nothing


def test_one_deadline_covers_the_read_the_apply_and_the_verify(tmp_path: Path) -> None:
    """The read spends 0.4 s of the 0.6: the apply gets what is left, not 0.6 of its own."""
    [result], _, _ = run_commands(tmp_path, [cmd("slow", read="sleep 0.4", apply=HANG)])
    assert "timed out after 0.6 s" in result.error
    assert 0.6 <= result.duration_s < 0.6 + GRACE_S + 1.0


def test_a_batch_gets_the_largest_timeout_of_its_members(tmp_path: Path) -> None:
    """0.8 s of work in one batch: the member allowed 0.3 s alone is not cut short."""
    catalog = [cmd("a", 0.3, apply="sleep 0.4"), cmd("b", 1.5, apply="sleep 0.4")]
    results, kind, _ = run_commands(tmp_path, catalog)
    assert [r.status for r in results] == [S.REPAIRED, S.REPAIRED]
    assert kind.applied == ["a+b"]


def test_a_timed_out_batch_is_not_retried_one_by_one(tmp_path: Path) -> None:
    """Killed mid-transaction: each alone would most likely hang again, timeout after timeout."""
    catalog = [cmd("a", apply="true"), cmd("b", apply=HANG), cmd("c", apply="true")]
    results, kind, took = run_commands(tmp_path, catalog)

    assert kind.applied == ["a+b+c"]
    assert [r.status for r in results] == [S.FAILED] * 3
    assert all("timed out after 0.6 s" in r.error for r in results)
    assert results[0].error.endswith("(in a batch with cmd/a, cmd/b, cmd/c)")
    assert took < 0.6 + GRACE_S + 1.0


def test_a_revert_has_a_deadline_of_its_own() -> None:
    """A change that used up the resource's time still leaves its restore time to run."""

    class Slow(Risky):
        def apply(
            self, ctx: Context, spec: MemSpec, state: str | None, changes: list[Change]
        ) -> None:
            clock[0] += 100  # the whole timeout, and more
            super().apply(ctx, spec, state, changes)

        def restore(self, ctx: Context, spec: MemSpec, snapshot: str | None) -> None:
            left.append(ctx.remaining_s())
            super().restore(ctx, spec, snapshot)

    clock = [0.0]
    left: list[float | None] = []
    system = fake({"fw": "0"}, confirms=[True, False])
    kind = Slow(system.memory)
    ctx = Context(log=logging.getLogger("test.engine"), clock=lambda: clock[0])
    [result] = engine.run([net("fw")], ctx, kinds=lambda name: kind, confirm=system.confirm)

    assert result.reverted and result.error == engine.REVERTED
    assert left == [Risky.timeout_s]
    assert system.memory.system == {"fw": "0"}


# --- a busy package manager: retried with back-off, within the deadline ---------------


class Contended(Batched):
    """The batchable fake kind, its "package manager" busy for the first ``refusals``
    reads or applies (of any resource)."""

    timeout_s = 10.0

    def __init__(self, memory: Memory, refusals: int, where: str = "apply") -> None:
        super().__init__(memory)
        self.refusals = refusals
        self.where = where
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def _busy(self, step: str) -> None:
        if step == self.where and self.refusals > 0:
            self.refusals -= 1
            raise Busy(
                f"{step}: the package manager is busy (its lock is held)",
                "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812",
            )

    def read(self, ctx: Context, spec: MemSpec) -> str | None:
        self._busy("read")
        return super().read(ctx, spec)

    def apply_batch(
        self, ctx: Context, items: Sequence[tuple[MemSpec, str | None, list[Change]]]
    ) -> None:
        self.applied.append("+".join(spec.key for spec, _, _ in items))
        self._busy("apply")
        for spec, _, _ in items:
            self.system[spec.key] = spec.value

    def apply(self, ctx: Context, spec: MemSpec, state: str | None, changes: list[Change]) -> None:
        self.apply_batch(ctx, [(spec, state, changes)])

    def run(
        self, catalog: list[CatalogResource], noop: bool = False
    ) -> list[engine.ResourceResult]:
        ctx = Context(log=logging.getLogger("test.engine"), clock=lambda: self.now)
        return engine.run(catalog, ctx, noop=noop, kinds=lambda name: self, sleep=self.sleep)


def test_a_busy_package_manager_is_waited_for_and_the_resource_read_again() -> None:
    kind = Contended(Memory({}), refusals=3)
    [result] = kind.run([pkg("a")])

    assert (result.status, result.error) == (S.REPAIRED, "")
    assert kind.slept == [0.5, 1.0, 2.0]  # back-off, doubling
    assert kind.reads == ["a"] * 5  # read before each of the 4 applies, and the verify
    assert kind.applied == ["a"] * 4


def test_a_package_manager_busy_until_the_deadline_fails_the_resource_as_transient(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kind = Contended(Memory({}), refusals=100)
    with caplog.at_level(logging.INFO, logger="test.engine"):
        [result] = kind.run([pkg("a")])

    # 10 s: waits of 0.5 + 1 + 2 + 4 leave 2.5 s, too little to wait 8 s and try again.
    assert kind.slept == [0.5, 1.0, 2.0, 4.0]
    assert result.status is S.FAILED
    assert result.transient
    assert result.error == (
        "apply: the package manager is busy (its lock is held): E: Could not get lock "
        "/var/lib/dpkg/lock-frontend. It is held by process 812 (still busy after 5 tries in 7.5 s)"
    )
    waits = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(waits) == 4 and waits[0].startswith("pkg/a: apply: the package manager is busy")


def test_the_resource_timeout_bounds_the_wait_for_a_busy_package_manager() -> None:
    kind = Contended(Memory({}), refusals=100)
    [result] = kind.run([CatalogResource("pkg", "a", {"key": "a", "value": "1"}, timeout_s=2)])
    assert kind.slept == [0.5, 1.0]
    assert result.error.endswith("(still busy after 3 tries in 1.5 s)")


def test_a_busy_batch_goes_one_by_one_and_the_first_waits() -> None:
    kind = Contended(Memory({}), refusals=2)
    results = kind.run([pkg("a"), pkg("b"), pkg("c")])

    assert [r.status for r in results] == [S.REPAIRED] * 3
    # The batch is refused; a alone is refused once more, then applied; b and c alone.
    assert kind.applied == ["a+b+c", "a", "a", "b", "c"]
    assert kind.slept == [0.5]


def test_a_busy_read_is_retried_also_in_a_dry_run() -> None:
    kind = Contended(Memory({"a": "0"}), refusals=2, where="read")
    [result] = kind.run([pkg("a")], noop=True)
    assert (result.status, kind.slept) == (S.DRIFTED, [0.5, 1.0])


def test_a_busy_read_of_a_batch_member_is_retried_before_the_batch() -> None:
    kind = Contended(Memory({}), refusals=1, where="read")
    results = kind.run([pkg("a"), pkg("b")])
    assert [r.status for r in results] == [S.REPAIRED] * 2
    assert (kind.applied, kind.slept) == (["a+b"], [0.5])


def test_audit_run_evaluates_every_resource_as_audit_whatever_its_mode() -> None:
    """``audit=True`` (the agent's audit lock): enforce resources of every kind only
    report, a held one is read like any audit resource, nothing is refreshed, and
    confirm-or-revert has nothing to guard, so it is never asked."""
    system = fake({"same": "1", "fw": "open", "conf": "old"}, confirms=[])
    catalog = [
        mem("same", "1"),
        mem("conf", "new"),
        svc("web", subscribe=("mem/conf",)),
        net("fw", "closed"),
        pkg("a"),
        pkg("b"),
        mem("held", "1"),
        mem("audited", "1", mode=Mode.AUDIT),
    ]
    ctx = Context(log=logging.getLogger("test.engine"))
    held = {"mem/held": "held: reverted earlier at revision 7; waiting for a new catalog"}
    results = engine.run(
        catalog, ctx, kinds=system.kinds, confirm=system.confirm, hold=held, audit=True
    )

    assert {r.id: r.status for r in results} == {
        "mem/same": S.IN_SYNC,
        "mem/conf": S.DRIFTED,
        "svc/web": S.DRIFTED,
        "net/fw": S.DRIFTED,
        "pkg/a": S.DRIFTED,
        "pkg/b": S.DRIFTED,
        "mem/held": S.DRIFTED,
        "mem/audited": S.DRIFTED,
    }
    by_id = {r.id: r for r in results}
    assert [str(c) for c in by_id["net/fw"].changes] == ["value: open → closed"]
    assert "refresh: pending → refreshed (notified by mem/conf)" in [
        str(c) for c in by_id["svc/web"].changes
    ]
    assert system.memory.applied == []
    assert system.memory.system == {"same": "1", "fw": "open", "conf": "old"}
    assert (system.confirm_calls, system.risky.restored, system.service.refreshed) == (0, [], [])
    assert not any(r.reverted for r in results)
    # The same catalog without the lock is enforced: the flag alone made the difference.
    enforced = fake({"same": "1", "fw": "open", "conf": "old"})
    again = engine.run(catalog, ctx, kinds=enforced.kinds)
    assert {r.id: r.status for r in again}["net/fw"] is S.REPAIRED
    assert enforced.memory.system["fw"] == "closed"
