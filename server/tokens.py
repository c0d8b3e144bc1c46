"""Enrollment tokens.

A token reads ``plumb1.<id>.<secret>.<ca-sha256>``. The id finds it in the
store, the secret proves it (only its SHA-256 is stored), and the CA
fingerprint lets the agent pin the CA before it trusts anything the server
says — the discovery-hash idea from kubeadm, carried in the token itself so
an operator pastes one string.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets

PREFIX = "plumb1"
_TOKEN = re.compile(r"^plumb1\.([0-9a-f]{8})\.([A-Za-z0-9_-]{32})\.([0-9a-f]{64})$")


@dataclasses.dataclass(frozen=True)
class Token:
    id: str
    secret: str
    ca_fingerprint: str

    def __str__(self) -> str:
        return f"{PREFIX}.{self.id}.{self.secret}.{self.ca_fingerprint}"

    @property
    def secret_sha256(self) -> str:
        return hash_secret(self.secret)


def new(ca_fingerprint: str) -> Token:
    return Token(secrets.token_hex(4), secrets.token_urlsafe(24), ca_fingerprint)


def parse(text: str) -> Token | None:
    match = _TOKEN.match(text.strip())
    return Token(*match.groups()) if match else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
