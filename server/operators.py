"""Operators: who may call the Admin service, and what each may do there.

An operator is a name, a role and one current certificate. The certificate
says *that* its holder is an operator (``OU=operator``, which no node
certificate carries) and *who* (``CN=alice``); the store says what it may do
(its role) and whether that certificate is still its current one, and every
Admin call asks the store (server/auth.py: ``OperatorCredentials``, a cache
the store empties on every change). The role is deliberately not in the
certificate: the store is read on every call anyway, so a role there could
only disagree with it, and a role change or a revocation would need a new
certificate to take effect.

Roles, each allowed what the one before it is, and more:

``viewer``
    reads: nodes, reports, drift, compliance, tokens (never their secrets),
    operators and the audit log.
``operator``
    also changes desired state: pushes.
``admin``
    also manages identities: tokens (create, revoke), nodes (revoke, remove,
    re-enroll) and operators (add, revoke).

Which role each Admin method needs is declared in one table,
``server.auth.ADMIN_RULES``.

An operator's key is made where the operator's config is written: by the
CLI of the admin who runs ``plumb operator add`` (only a CSR reaches the
server), or by ``plumb-server operator add --out DIR`` on the server host,
which writes it to DIR only, never into the server's data dir. What either
writes is a portable CLI config: DIR holds ``cli.toml``, ``operator.key``,
``operator.crt`` and ``ca.crt`` (0600, in a 0700 directory), and
``cli.toml`` names the other three relative to itself, so DIR can be copied
anywhere as it is.
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server import audit, tokens
from server.errors import PlumbServerError
from server.pki import ROLE_OPERATOR, write_private

if TYPE_CHECKING:
    from server.store import Store


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @classmethod
    def parse(cls, text: str) -> Role | None:
        try:
            return cls(text)
        except ValueError:
            return None

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may (each role includes the ones below)."""
        return _RANK[self] >= _RANK[needed]


_RANK = {role: rank for rank, role in enumerate(Role)}

ROLES = ", ".join(role.value for role in Role)

#: An operator's name is its certificate's CN: the node-name rule keeps it short and plain.
NAME_RULE = tokens.NAME_RULE.replace("host name", "name")


def valid_name(name: str) -> bool:
    return tokens.valid_node_name(name)


# ------------------------------------------------------------ the portable CLI config

CONFIG = "cli.toml"
KEY = "operator.key"
CERT = "operator.crt"
CA = "ca.crt"


def check_out_dir(directory: Path, data_dir: Path | None = None) -> None:
    """Refuse a DIR that cannot take a new config: not empty, or inside the server's data dir.

    Checked before anything is made, so a refusal leaves nothing behind.
    """
    if data_dir is not None and _inside(directory, data_dir):
        raise PlumbServerError(
            f"{directory} is inside the server's data dir {data_dir}: an operator's key "
            "stays with the operator, give --out a directory outside it"
        )
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise PlumbServerError(
            f"{directory} exists and is not an empty directory: choose another --out"
        )


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def write_config(
    directory: Path, server: str, key_pem: bytes, cert_pem: bytes, ca_pem: bytes
) -> Path:
    """Write a portable CLI config into ``directory`` (0700, files 0600); its cli.toml."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    write_private(directory / KEY, key_pem)
    write_private(directory / CERT, cert_pem)
    write_private(directory / CA, ca_pem)
    # Paths relative to cli.toml: the CLI reads them from the config's own
    # directory, so the directory works wherever it is copied.
    settings = {"server": server, "ca": CA, "cert": CERT, "key": KEY}
    path = directory / CONFIG
    write_private(path, "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()).encode())
    return path


def certificate_request(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A CSR for operator ``name`` (the CA decides the subject; this names what is asked)."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_OPERATOR),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


# ------------------------------------------------------------ upgrading from one shared operator


def adopt_bootstrap_operator(store: Store, data_dir: Path, now: float) -> str | None:
    """Record the operator certificate of an older ``plumb-server init`` as an admin.

    Before operators were kept in the store, ``init`` wrote one operator
    certificate (``CN=operator``) under ``<data>/operator`` and every Admin
    call took it. A store that has never had an operator (one migrated to
    0008) gets that certificate as an admin of its name, so the upgrade locks
    nobody out; with it goes an audit entry. What to say of it, or None when
    there was nothing to do. Run at every start and ``migrate``: once the
    store has an operator, never again.
    """
    if store.list_operators(revoked=True):
        return None
    path = data_dir / "operator" / CERT
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cn) != 1 or [a.value for a in ou] != [ROLE_OPERATOR]:
        return None
    name, serial = str(cn[0].value), format(cert.serial_number, "x")
    store.add_operator(name, Role.ADMIN, serial, now)
    details = {"operator": name, "role": Role.ADMIN.value, "cert_serial": serial}
    details["adopted"] = str(path)
    store.audit(audit.Entry(audit.Actor.server(), audit.LOCAL, "AddOperator", details), now)
    return (
        f"the operator certificate of {path} (from before operators had roles) is now "
        f"admin operator {name!r}: add named operators ('plumb-server operator add'), "
        f"then revoke it ('plumb operator revoke {name}')"
    )
