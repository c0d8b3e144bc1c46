"""Enrollment tokens: their format, the names they allow, and the node-name rule.

A token reads ``plumb1.<id>.<secret>.<ca-sha256>``. The id finds it in the
store, the secret proves it (only its SHA-256 is stored), and the CA
fingerprint lets the agent pin the CA before it trusts anything the server
says — the discovery-hash idea from kubeadm, carried in the token itself so
an operator pastes one string.

A token may be **bound** to names: a list of exact names
(``plumb token create --names db-2,db-3``) or one shell-style pattern
(``--name-pattern 'web-*'``, matched by :func:`fnmatch.fnmatchcase`: ``*``
is any run of characters, dots included, ``?`` one character, ``[a-c]`` and
``[!x]`` sets). A node may enroll with a bound token only under a name it
allows. An unbound token allows any name except one that a manifest targets
by name (``target.names``): such a name holds secrets meant for one host, so
only a token that names it (or whose pattern matches it) may claim it.
Fnmatch rather than a regular expression: operators know it from their
shell, it cannot be made slow, and it says "these hosts" without anchors.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import re
import secrets
from collections.abc import Sequence

PREFIX = "plumb1"
_TOKEN = re.compile(r"plumb1\.([0-9a-f]{8})\.([A-Za-z0-9_-]{32})\.([0-9a-f]{64})")
TOKEN_ID = re.compile(r"[0-9a-f]{8}")

#: Longest node name: it is the certificate's common name, which X.509 limits to 64.
MAX_NAME = 64
# A DNS label; names are labels joined by dots. Checked with fullmatch, never
# match(): "$" would let a trailing newline through ("node-a\n").
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NODE_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# What a name pattern may hold: name characters and fnmatch's * ? [ ] !.
_PATTERN = re.compile(r"[a-z0-9.*?\[\]!-]{1,253}")

NAME_RULE = (
    f"use a lower-case host name of at most {MAX_NAME} characters (letters, digits, '-' and '.')"
)


def valid_node_name(name: str) -> bool:
    """Whether ``name`` may name a node: a lower-case host name of at most 64 characters."""
    return len(name) <= MAX_NAME and _NODE_NAME.fullmatch(name) is not None


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot bind a token, or None when it can."""
    if not _PATTERN.fullmatch(pattern):
        return (
            f"name pattern {pattern!r} may hold only lower-case letters, digits, '-', '.' "
            "and the wildcards * ? [ ] ! (at most 253 characters)"
        )
    return None


@dataclasses.dataclass(frozen=True)
class Binding:
    """The names a token allows: ``names``, or ``pattern``, or (neither) any name."""

    names: tuple[str, ...] | None = None
    pattern: str | None = None

    @property
    def bound(self) -> bool:
        return self.names is not None or self.pattern is not None

    def allows(self, node: str) -> bool:
        if self.names is not None:
            return node in self.names
        if self.pattern is not None:
            return fnmatch.fnmatchcase(node, self.pattern)
        return True

    def __str__(self) -> str:
        if self.names is not None:
            return f"only the name(s) {', '.join(self.names)}"
        if self.pattern is not None:
            return f"only names matching {self.pattern!r}"
        return "any name"


#: A token bound to no name.
UNBOUND = Binding()


def binding(names: Sequence[str] | None, pattern: str | None) -> Binding:
    return Binding(None if names is None else tuple(names), pattern or None)


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
    match = _TOKEN.fullmatch(text.strip())
    return Token(*match.groups()) if match else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
