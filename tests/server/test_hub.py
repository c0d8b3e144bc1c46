"""One live session per node, ended when its certificate may no longer be used (server/hub.py).

Pure: outboxes on an event loop, credentials from a dict; the streams
themselves are tested over real mTLS in tests/integration/test_revocation.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from server.auth import Identity, NodeCredentials, PeerCert, Refusal
from server.hub import REPLACED, Hub
from server.pki import ROLE_NODE
from server.store import NodeCredential

FAR = 4_000_000_000.0  # a notAfter far ahead


def peer(serial: str = "5f3a") -> PeerCert:
    return PeerCert(Identity(ROLE_NODE, "web-1"), serial, FAR)


def drained(outbox: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not outbox.empty():
        items.append(outbox.get_nowait())
    return items


def test_a_second_session_replaces_the_first() -> None:
    async def scenario() -> None:
        hub = Hub()
        first = hub.attach("web-1", peer())
        second = hub.attach("web-1", peer())
        assert drained(first) == [REPLACED] and drained(second) == []
        assert REPLACED.code == grpc.StatusCode.ABORTED
        # The first stream's end must not take the second with it.
        hub.detach("web-1", first)
        assert hub.connected("web-1")
        assert hub.send("web-1", "catalog") and drained(second) == ["catalog"]
        hub.detach("web-1", second)
        assert not hub.connected("web-1") and not hub.send("web-1", "catalog")

    asyncio.run(scenario())


def test_a_recheck_ends_the_session_only_once_its_credential_refuses() -> None:
    store = {"web-1": NodeCredential("5f3a")}

    async def scenario() -> None:
        credentials = NodeCredentials(store.get)
        hub = Hub(credentials)
        hub.watch()
        outbox = hub.attach("web-1", peer())
        assert await hub.recheck("web-1") == 0 and drained(outbox) == []
        store["web-1"] = NodeCredential("5f3a", revoked_at=1.0)
        # As the store does after its commit, from the committing thread.
        await asyncio.to_thread(credentials.changed, "web-1")
        ended = await asyncio.wait_for(outbox.get(), timeout=5)
        assert isinstance(ended, Refusal) and ended.code == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in ended.message
        assert not hub.connected("web-1")

    asyncio.run(scenario())


def test_a_session_of_the_new_certificate_outlives_the_change() -> None:
    """Re-enrolled: the store's serial changed; the session with the new one stays."""
    store = {"web-1": NodeCredential("0b0b")}

    async def scenario() -> None:
        credentials = NodeCredentials(store.get)
        hub = Hub(credentials)
        outbox = hub.attach("web-1", peer("0b0b"))
        credentials.changed("web-1")
        assert await hub.recheck("web-1") == 0
        assert drained(outbox) == [] and hub.connected("web-1")

    asyncio.run(scenario())


def test_ending_a_replaced_session_leaves_the_new_one() -> None:
    async def scenario() -> None:
        hub = Hub()
        first = hub.attach("web-1", peer())
        second = hub.attach("web-1", peer())
        token = hub.live("web-1")
        refusal = Refusal(grpc.StatusCode.UNAUTHENTICATED, "expired")
        assert hub.end("web-1", first, refusal) is False
        assert hub.live("web-1") is token and drained(second) == []

    asyncio.run(scenario())
