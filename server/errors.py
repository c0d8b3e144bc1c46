"""Errors raised by the server.

    PlumbServerError            anything the server raises on purpose
    ├── ManifestInvalid         manifests were refused; carries every ManifestError
    ├── CompileError            a node's catalog cannot be compiled (conflict, missing require)
    ├── ConfigError             server.toml is missing or wrong
    ├── CSRRejected             an enrolling node's certificate request is unusable
    ├── StoreError              the store cannot be created, opened, checked or migrated
    │                           (missing, empty, damaged, newer, not SQLite)
    ├── TokenRefused            an enrollment token is unknown, expired or used up
    │   └── UnknownToken        no token has that id and secret (anyone can send one)
    ├── NodeExists              a node of that name is already enrolled
    ├── UnknownNode             no node of that name is enrolled (plumb node revoke, rm)
    ├── OperatorExists          an operator of that name is current (operator add)
    ├── UnknownOperator         no operator has that name (operator revoke)
    ├── LastAdmin               revoking it would leave no admin who can call Admin
    ├── IngestFailed            a report's batch could not be committed (server/ingest.py)
    └── CLIError                something the operator must fix (the plumb CLI)

A :class:`ManifestError` is not an exception but one problem in one file
(file, line, field, what was expected), so a push can report all of them at
once instead of stopping at the first. Library errors (YAML, sqlite, grpc)
are translated into these at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


class PlumbServerError(Exception):
    """Base of every error the server raises on purpose."""


@dataclasses.dataclass(frozen=True)
class ManifestError:
    """One problem in a manifest: ``web.yaml:12: resources[0].spec.mode: expected ...``.

    ``field`` is the path inside the document (``resources[0].spec.mode``,
    ``target.labels``, ``name``); it is empty when the problem concerns the
    file as a whole, e.g. a YAML syntax error.
    """

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ManifestInvalid(PlumbServerError):
    """One or more manifests are invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: Iterable[ManifestError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.file, e.line))
        super().__init__("\n".join(str(e) for e in self.errors))


class CompileError(PlumbServerError):
    """A node's catalog cannot be compiled; each problem is placed at a file and line."""

    def __init__(self, node: str, problems: Iterable[ManifestError]) -> None:
        self.node = node
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(PlumbServerError):
    """The server's configuration is missing or invalid; the message names the file."""


class CSRRejected(PlumbServerError):
    """A certificate signing request is malformed or does not match the request."""


class StoreError(PlumbServerError):
    """The store cannot be created, opened, checked or migrated; the message names the file.

    Raised where the store is opened (server/store.py), so that a missing,
    empty, damaged or too-new store stops the server with one line saying what
    to do, instead of a traceback or, worse, a new empty store. Queries on an
    open store are not wrapped: the ingest path stays as fast as SQLite.
    """


class TokenRefused(PlumbServerError):
    """An enrollment token is unknown, expired or used up; the message says which."""


class UnknownToken(TokenRefused):
    """No token has that id, or its secret is not that token's: nothing proves who sent it."""


class NodeExists(PlumbServerError):
    """A node of that name is already enrolled."""


class UnknownNode(PlumbServerError):
    """No node of that name is enrolled."""


class OperatorExists(PlumbServerError):
    """An operator of that name exists and is not revoked."""


class UnknownOperator(PlumbServerError):
    """No operator has that name."""


class LastAdmin(PlumbServerError):
    """Revoking this operator would leave no admin (plumb-server operator add makes one)."""


class IngestFailed(PlumbServerError):
    """A report could not be stored (its batch's commit failed, or the server is stopping)."""


class CLIError(PlumbServerError):
    """Something the operator must fix; the plumb CLI prints it without a traceback."""
