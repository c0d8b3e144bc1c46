"""Confirm-or-revert against a real server: the fresh-connection health check,
and the runner holding a reverted resource until a new catalog revision.

The server is the real `plumb-server` on loopback (tests/integration/harness),
and the node's credentials come from a real enrollment.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent import runner as runner_module
from agent.cache import CatalogCache
from agent.confirm import server_reachable
from agent.report import Trigger
from agent.runner import Runner
from agent.spool import Spool
from agent.state import StateDir
from modules import registry
from modules.base import Change, Context, Identity, Kind, Risky, Status
from modules.catalog import Catalog, CatalogResource
from protos import plumb_pb2 as pb
from server.pki import PKI, cert_pem, sign_payload
from tests.integration.harness import Agent, Server


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Agent]]:
    base = tmp_path_factory.mktemp("confirm")
    server = Server(base / "server")
    server.start()
    try:
        agent = Agent("node1", base / "agents")
        result = agent.enroll(server, server.token())
        assert result.returncode == 0, result.stderr
        yield server, agent
    finally:
        server.stop()


def closed_port() -> str:
    """An address on loopback where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_reachable_server_over_mtls(enrolled: tuple[Server, Agent]) -> None:
    _, agent = enrolled
    state = StateDir(agent.state_dir)

    assert server_reachable(state, state.enrollment().server, timeout_s=10) is True


def test_closed_port_is_unreachable_within_the_timeout(enrolled: tuple[Server, Agent]) -> None:
    _, agent = enrolled
    timeout = 1.0
    started = time.monotonic()

    assert server_reachable(StateDir(agent.state_dir), closed_port(), timeout_s=timeout) is False
    assert time.monotonic() - started < timeout + 1


def test_a_server_refusing_our_certificate_is_unreachable(
    enrolled: tuple[Server, Agent], tmp_path: Path
) -> None:
    """A server our pinned CA did not certify (here: our node identity, but the CA of
    another installation) is no management path: the handshake fails, so False."""
    _, agent = enrolled
    state = StateDir(agent.state_dir)
    other = Server(tmp_path / "other")  # `init` only: a second installation, another CA
    other.stop()
    stranger = StateDir(tmp_path / "stranger")
    stranger.ensure()
    for name in ("node.key", "node.crt"):
        (stranger.path / name).write_bytes((state.path / name).read_bytes())
    (stranger.path / "ca.crt").write_bytes((other.data_dir / "pki" / "ca.crt").read_bytes())

    assert server_reachable(stranger, state.enrollment().server, timeout_s=1) is False


def test_unreadable_credentials_are_unreachable(tmp_path: Path) -> None:
    assert server_reachable(StateDir(tmp_path), closed_port(), timeout_s=1) is False


# --- the runner: confirm wiring and the hold --------------------------------


class Gate(Kind[Mapping[str, Any], "str | None"], Risky[Mapping[str, Any], "str | None"]):
    """A risky kind whose system is a dict (a stand-in for a firewall)."""

    name = "test-gate"

    def __init__(self) -> None:
        self.system: dict[str, str] = {}
        self.applied: list[str] = []

    def parse(self, raw: Mapping[str, Any]) -> Mapping[str, Any]:
        return raw

    def identities(self, spec: Mapping[str, Any]) -> tuple[Identity, ...]:
        return (Identity("gate", str(spec.get("key", ""))),)

    def read(self, ctx: Context, spec: Mapping[str, Any]) -> str | None:
        return self.system.get(spec["key"])

    def diff(self, spec: Mapping[str, Any], state: str | None) -> list[Change]:
        value = spec["value"]
        return [] if state == value else [Change("value", state or "absent", value)]

    def apply(
        self, ctx: Context, spec: Mapping[str, Any], state: str | None, changes: list[Change]
    ) -> None:
        self.applied.append(spec["key"])
        self.system[spec["key"]] = spec["value"]

    def restore(self, ctx: Context, spec: Mapping[str, Any], snapshot: str | None) -> None:
        if snapshot is None:
            self.system.pop(spec["key"], None)
        else:
            self.system[spec["key"]] = snapshot


@pytest.fixture
def gate() -> Iterator[Gate]:
    kind = Gate()
    registry.register(kind)
    try:
        yield kind
    finally:  # the registry is the process's: leave it as the next test expects it
        registry._registered.pop(Gate.name)


def cache_catalog(server: Server, state: StateDir, node: str, revision: int, value: str) -> None:
    """Write a catalog signed by the server's own signer, as if the server had sent it."""
    resource = CatalogResource(Gate.name, "fw", {"key": "fw", "value": value})
    payload = Catalog(node, revision, (resource,)).to_json()
    signer = PKI(server.data_dir / "pki").load("signer")
    signed = pb.SignedCatalog(
        revision=revision,
        payload=payload,
        signature=sign_payload(signer.key, payload),
        signer_pem=cert_pem(signer.cert),
    )
    state.catalog.write_bytes(signed.SerializeToString())


def test_runner_reverts_then_holds_until_a_new_revision(
    enrolled: tuple[Server, Agent], gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, agent = enrolled
    state = StateDir(agent.state_dir)
    address = state.enrollment().server
    answers: list[bool] = []
    asked: list[tuple[str, float]] = []

    def reachable(probe_state: StateDir, probe_address: str, timeout_s: float) -> bool:
        assert probe_state is state
        asked.append((probe_address, timeout_s))
        return answers.pop(0)

    monkeypatch.setattr(runner_module, "server_reachable", reachable)
    runner = Runner(
        state,
        CatalogCache(state, agent.name),
        Spool(state.spool),
        agent.root,
        address,
        confirm_timeout_s=0.5,
    )
    gate.system["fw"] = "open"
    cache_catalog(server, state, agent.name, revision=1, value="closed")

    answers[:] = [True, False]  # reachable before the change, not after
    first = runner.run(Trigger.MANUAL)
    assert first is not None
    assert [(r.status, r.error) for r in first.results] == [
        (Status.FAILED, "reverted: lost connection to the server")
    ]
    assert gate.system == {"fw": "open"}
    assert asked == [(address, 0.5), (address, 0.5)]
    assert state.read_json(state.path / "reverted.json") == {
        "revision": 1,
        "ids": ["test-gate/fw"],
    }

    second = runner.run(Trigger.SCHEDULE)  # same revision: held, nothing applied or asked
    assert second is not None
    assert [(r.status, r.error) for r in second.results] == [
        (Status.FAILED, "held: reverted earlier at revision 1; waiting for a new catalog")
    ]
    assert (gate.applied, len(asked)) == (["fw"], 2)

    cache_catalog(server, state, agent.name, revision=2, value="closed")
    answers[:] = [True, True]
    third = runner.run(Trigger.PUSH)
    assert third is not None
    assert [r.status for r in third.results] == [Status.REPAIRED]
    assert gate.system == {"fw": "closed"}
    assert not (state.path / "reverted.json").exists()


def test_under_the_audit_lock_the_runner_applies_nothing_and_has_nothing_to_revert(
    enrolled: tuple[Server, Agent], gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock is checked at the start of every run, by the runner everything goes
    through: set between two runs of one Runner (a daemon's), it holds from the next."""
    from agent import auditlock

    server, agent = enrolled
    state = StateDir(agent.state_dir)
    asked: list[str] = []

    def reachable(probe_state: StateDir, probe_address: str, timeout_s: float) -> bool:
        asked.append(probe_address)
        return False  # were anything applied, it would be reverted

    monkeypatch.setattr(runner_module, "server_reachable", reachable)
    (state.path / "reverted.json").unlink(missing_ok=True)
    runner = Runner(state, CatalogCache(state, agent.name), Spool(state.spool), agent.root, "x:1")
    gate.system["fw"] = "open"
    cache_catalog(server, state, agent.name, revision=5, value="closed")
    auditlock.turn_on(state, "hands off")
    try:
        locked = runner.run(Trigger.WATCH)
        assert locked is not None
        assert [(r.status, r.reverted) for r in locked.results] == [(Status.DRIFTED, False)]
        assert [str(c) for c in locked.results[0].changes] == ["value: open → closed"]
        assert (gate.applied, gate.system, asked) == ([], {"fw": "open"}, [])
        assert not (state.path / "reverted.json").exists()
        assert [c.name for c in runner.audit_lock.conditions()] == ["audit_lock"]
    finally:
        auditlock.turn_off(state)

    answers = [True, True]
    monkeypatch.setattr(runner_module, "server_reachable", lambda *_: answers.pop(0))
    lifted = runner.run(Trigger.SCHEDULE)
    assert lifted is not None
    assert [r.status for r in lifted.results] == [Status.REPAIRED]
    assert gate.system == {"fw": "closed"} and answers == []
    assert runner.audit_lock.conditions() == []
