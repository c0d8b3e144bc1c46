"""Operators in the store, their roles, their portable configs, and the upgrade from one."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import operators
from server.cli import load_config
from server.errors import LastAdmin, OperatorExists, PlumbServerError, UnknownOperator
from server.operators import Role
from server.pki import ROLE_NODE, ROLE_OPERATOR, cert_pem, create_ca, issue_keypair
from server.store import OperatorCredential, OperatorRow, Store

T0 = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.create(f"sqlite:///{tmp_path / 'plumb.db'}")
    yield store
    store.close()


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.VIEWER, {Role.VIEWER}),
        (Role.OPERATOR, {Role.VIEWER, Role.OPERATOR}),
        (Role.ADMIN, {Role.VIEWER, Role.OPERATOR, Role.ADMIN}),
    ],
)
def test_each_role_allows_what_the_ones_below_do(role: Role, allowed: set[Role]) -> None:
    assert {needed for needed in Role if role.allows(needed)} == allowed


def test_an_operator_is_kept_with_its_role_and_one_serial(store: Store) -> None:
    heard: list[str] = []
    store.on_operator_change(heard.append)
    assert store.add_operator("alice", Role.VIEWER, "5f3a", T0) == OperatorRow(
        "alice", "viewer", "5f3a", T0
    )
    assert store.operator_credential("alice") == OperatorCredential("viewer", "5f3a")
    assert store.operator_credential("bob") is None
    with pytest.raises(OperatorExists, match="an operator named 'alice' exists"):
        store.add_operator("alice", Role.ADMIN, "77", T0 + 1)
    assert store.operator_credential("alice") == OperatorCredential("viewer", "5f3a")
    assert heard == ["alice"]


def test_a_revoked_operator_stays_listed_and_its_name_can_be_given_again(store: Store) -> None:
    store.add_operator("root", Role.ADMIN, "01", T0)
    store.add_operator("alice", Role.VIEWER, "5f3a", T0)
    row, revoked_now = store.revoke_operator("alice", T0 + 10)
    assert (row.revoked_at, revoked_now) == (T0 + 10, True)
    assert store.revoke_operator("alice", T0 + 20) == (row, False)  # keeps the first time
    assert [o.name for o in store.list_operators()] == ["root"]
    assert [o.name for o in store.list_operators(revoked=True)] == ["alice", "root"]
    store.add_operator("alice", Role.OPERATOR, "77", T0 + 30)
    assert store.operator_credential("alice") == OperatorCredential("operator", "77")
    with pytest.raises(UnknownOperator, match="no operator is named 'ghost'"):
        store.revoke_operator("ghost", T0)


def test_the_admin_service_never_revokes_the_last_admin(store: Store) -> None:
    store.add_operator("root", Role.ADMIN, "01", T0)
    store.add_operator("alice", Role.VIEWER, "02", T0)
    with pytest.raises(LastAdmin, match="root is the last admin"):
        store.revoke_operator("root", T0 + 1, keep_an_admin=True)
    assert store.operator_credential("root") == OperatorCredential("admin", "01")
    store.add_operator("second", Role.ADMIN, "03", T0)
    assert store.revoke_operator("root", T0 + 2, keep_an_admin=True)[1]
    # On the server host (plumb-server operator revoke), any.
    assert store.revoke_operator("second", T0 + 3)[1]


def test_renewal_replaces_the_serial_only_from_the_current_one(store: Store) -> None:
    heard: list[str] = []
    store.on_operator_change(heard.append)
    store.add_operator("alice", Role.OPERATOR, "01", T0)
    assert not store.renew_operator("alice", "99", "02")  # not its current one
    assert store.renew_operator("alice", "01", "02")
    assert store.operator_credential("alice") == OperatorCredential("operator", "02")
    store.revoke_operator("alice", T0 + 1)
    assert not store.renew_operator("alice", "02", "03")  # revoked
    assert heard == ["alice", "alice", "alice"]


# ------------------------------------------------------------ the portable CLI config


def test_a_config_is_portable_and_private(tmp_path: Path) -> None:
    pair = issue_keypair(create_ca(), "alice", ROLE_OPERATOR)
    out = tmp_path / "alice"
    path = operators.write_config(out, "plumb.example.com:8443", b"KEY", cert_pem(pair.cert), b"CA")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        "cli.toml": 0o600,
        "operator.key": 0o600,
        "operator.crt": 0o600,
        "ca.crt": 0o600,
    }
    moved = tmp_path / "elsewhere" / "config"
    moved.parent.mkdir()
    os.rename(out, moved)
    config = load_config(moved / path.name)
    assert config.server == "plumb.example.com:8443"
    assert config.key.read_bytes() == b"KEY" and config.ca.read_bytes() == b"CA"


def test_an_out_dir_inside_the_data_dir_or_not_empty_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "pki").mkdir(parents=True)
    with pytest.raises(PlumbServerError, match="inside the server's data dir"):
        operators.check_out_dir(data / "alice", data)
    with pytest.raises(PlumbServerError, match="inside the server's data dir"):
        operators.check_out_dir(data / "pki" / ".." / "x", data)
    full = tmp_path / "full"
    full.mkdir()
    (full / "cli.toml").write_text("")
    with pytest.raises(PlumbServerError, match="not an empty directory"):
        operators.check_out_dir(full, data)
    operators.check_out_dir(tmp_path / "new", data)  # fine: nothing raised


# ------------------------------------------------------------ upgrading from one operator


def _old_data_dir(tmp_path: Path, name: str = "operator", role: str = ROLE_OPERATOR) -> Path:
    """A data dir as an older init left it: one operator certificate under operator/."""
    data = tmp_path / "data"
    pair = issue_keypair(create_ca(), name, role)
    (data / "operator").mkdir(parents=True)
    (data / "operator" / "operator.crt").write_bytes(cert_pem(pair.cert))
    return data


def test_an_older_init_s_operator_becomes_an_admin_once(tmp_path: Path, store: Store) -> None:
    data = _old_data_dir(tmp_path)
    said = operators.adopt_bootstrap_operator(store, data, T0)
    assert said is not None and "is now admin operator 'operator'" in said
    credential = store.operator_credential("operator")
    assert credential is not None and credential.role == "admin"
    (entry,), _ = store.audit_entries()
    assert (entry.actor_kind, entry.action, entry.peer) == ("server", "AddOperator", "local")
    assert operators.adopt_bootstrap_operator(store, data, T0 + 1) is None
    assert len(store.list_operators(revoked=True)) == 1


def test_nothing_is_adopted_into_a_store_that_has_operators(tmp_path: Path, store: Store) -> None:
    store.add_operator("root", Role.ADMIN, "01", T0)
    store.revoke_operator("root", T0 + 1)
    assert operators.adopt_bootstrap_operator(store, _old_data_dir(tmp_path), T0) is None
    assert store.operator_credential("operator") is None


def test_only_an_operator_certificate_is_adopted(tmp_path: Path, store: Store) -> None:
    data = _old_data_dir(tmp_path, "web-1", ROLE_NODE)
    assert operators.adopt_bootstrap_operator(store, data, T0) is None
    assert operators.adopt_bootstrap_operator(store, tmp_path / "none", T0) is None
    assert store.list_operators(revoked=True) == []
