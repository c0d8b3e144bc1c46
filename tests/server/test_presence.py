"""Presence is batched, and a late batch never moves a node backwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.presence import PresenceLog
from server.store import NodeSeen, Store, nodes


def _store(tmp_path: Path) -> Store:
    store = Store.create(f"sqlite:///{tmp_path / 'plumb.db'}")
    with store.engine.begin() as conn:
        conn.execute(
            nodes.insert(),
            [
                {"name": n, "labels": {}, "cert_serial": "1", "enrolled_at": 0, "facts": {}}
                for n in ("a", "b")
            ],
        )
    return store


def test_flush_writes_what_hellos_said(tmp_path: Path) -> None:
    store = _store(tmp_path)
    clock = iter([10.0, 11.0, 12.0])
    presence = PresenceLog(store, clock=lambda: next(clock))
    presence.seen("a", applied_revision=3, facts={"os": "debian"})
    presence.seen("a")  # a disconnect later: keeps what the hello said
    presence.seen("b", applied_revision=1)
    asyncio.run(presence.flush())
    a, b = store.node("a"), store.node("b")
    assert a is not None and (a.last_seen, a.applied_revision) == (11.0, 3)
    assert a.facts == {"os": "debian"}  # the later bare "seen" kept them
    assert b is not None and (b.last_seen, b.applied_revision) == (12.0, 1)
    asyncio.run(presence.flush())  # nothing pending: nothing written
    store.close()


def test_a_late_batch_never_moves_a_node_backwards(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.nodes_seen({"a": NodeSeen(last_seen=50.0, applied_revision=7)})
    store.nodes_seen({"a": NodeSeen(last_seen=40.0, applied_revision=5, facts={"k": "v"})})
    a = store.node("a")
    assert a is not None and (a.last_seen, a.applied_revision) == (50.0, 7)
    store.close()
