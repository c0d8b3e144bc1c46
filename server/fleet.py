"""Desired state for the fleet: push a revision, compile and sign catalogs.

A push names manifest files. The new revision is the previous revision's
manifest set with those manifests added or replaced (by manifest name), so a
revision always holds the complete desired state and is immutable once
stored. Everything is validated before anything is stored: a bad manifest
refuses the whole push.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from protos import plumb_pb2 as pb
from server import catalog as compiler
from server import manifest as manifests_
from server.errors import CompileError, ManifestError
from server.pki import KeyPair, cert_pem, sign_payload
from server.store import ManifestSource, NodeRow, Store

log = logging.getLogger("plumb.server.fleet")


@dataclasses.dataclass(frozen=True)
class PushOutcome:
    revision: int  # 0 when refused
    errors: list[ManifestError]
    targeted: list[str]
    catalogs: dict[str, bytes] = dataclasses.field(default_factory=dict)  # node -> payload


class Fleet:
    def __init__(
        self, store: Store, signer: KeyPair, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.signer = signer
        self.clock = clock
        self._signer_pem = cert_pem(signer.cert)

    def push(self, files: Sequence[tuple[str, str]]) -> PushOutcome:
        """Validate ``(path, text)`` files, store a new revision and every node's catalog."""
        try:
            pushed = manifests_.load_all(files)
        except manifests_.ManifestInvalid as exc:
            return PushOutcome(0, exc.errors, [])
        _, previous = self.store.latest_revision()
        merged = _merge(_load_sources(previous), pushed)
        errors = manifests_.validate_set(merged)
        if errors:
            return PushOutcome(0, errors, [])
        nodes = self.store.list_nodes()
        try:
            # Compiled before the revision exists, so a conflict stores nothing.
            compiled = compiler.compile_fleet(merged, [(n.name, n.labels) for n in nodes], 0)
        except CompileError as exc:
            return PushOutcome(0, [ManifestError("", 0, "", p) for p in exc.problems], [])
        revision = self.store.add_revision(
            [ManifestSource(m.name, m.file, m.source) for m in merged], self.clock()
        )
        payloads = {
            name: dataclasses.replace(c, revision=revision).to_json()
            for name, c in compiled.items()
        }
        self.store.save_catalogs(revision, payloads)
        targeted = [
            n.name for n in nodes if any(m.target.matches(n.name, n.labels) for m in pushed)
        ]
        return PushOutcome(revision, [], targeted, payloads)

    def signed_catalog(self, node_name: str) -> pb.SignedCatalog | None:
        """The node's catalog at the latest revision, compiled on first need."""
        revision = self.store.latest_revision_id()
        if revision == 0:
            return None
        payload = self.store.catalog(node_name, revision)
        if payload is None:
            node = self.store.node(node_name)
            if node is None:
                return None
            try:
                payload = self._compile(
                    _load_sources(self.store.revision(revision)), node, revision
                )
            except CompileError as exc:
                # A node enrolled after the push can make two manifests collide
                # on it. It keeps its last good catalog; the operator must fix
                # the manifests, and the log says exactly what collides.
                log.error("no catalog for node %s at revision %d: %s", node_name, revision, exc)
                return None
        return self.sign(revision, payload)

    def sign(self, revision: int, payload: bytes) -> pb.SignedCatalog:
        return pb.SignedCatalog(
            revision=revision,
            payload=payload,
            signature=sign_payload(self.signer.key, payload),
            signer_pem=self._signer_pem,
        )

    def _compile(
        self, merged: Sequence[manifests_.Manifest], node: NodeRow, revision: int
    ) -> bytes:
        catalog = compiler.compile_catalog(merged, node.name, node.labels, revision)
        payload = catalog.to_json()
        self.store.save_catalogs(revision, {node.name: payload})
        return payload


def _load_sources(sources: Sequence[ManifestSource]) -> list[manifests_.Manifest]:
    # Stored manifests were valid when pushed; loading them again cannot fail
    # unless a kind's schema has since become stricter, which must be loud.
    return [manifests_.load(s.file, s.source) for s in sources]


def _merge(
    previous: Sequence[manifests_.Manifest], pushed: Sequence[manifests_.Manifest]
) -> list[manifests_.Manifest]:
    replaced = {m.name for m in pushed}
    return [m for m in previous if m.name not in replaced] + list(pushed)
