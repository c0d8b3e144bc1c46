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
from collections.abc import Callable, Mapping, Sequence

from modules.catalog import Catalog
from protos import plumb_pb2 as pb
from protos.limits import MAX_CATALOG_BYTES
from server import compiler
from server import compliance as compliance_
from server import manifest as manifests_
from server.errors import CompileError, ManifestError
from server.pki import KeyPair, cert_pem, sign_payload
from server.store import ManifestSource, NodeRow, Store

log = logging.getLogger("plumb.server.fleet")


@dataclasses.dataclass(frozen=True)
class PushOutcome:
    revision: int  # 0 when refused; the unchanged revision when nothing changed
    errors: list[ManifestError]
    #: Nodes whose catalog this push changes: selected by a pushed manifest that
    #: differs from the stored one of its name, before or after the change.
    targeted: list[str]
    catalogs: dict[str, bytes] = dataclasses.field(default_factory=dict)  # node -> payload
    #: The pushed manifests are byte-identical to the latest revision's: no new revision.
    unchanged: bool = False
    #: ``target.names`` entries of the pushed manifests that name no enrolled node.
    unmatched_names: list[str] = dataclasses.field(default_factory=list)


class Fleet:
    def __init__(
        self, store: Store, signer: KeyPair, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.clock = clock
        # One attribute: a catalog signed during a rotation names the key that signed it.
        self._signing = (signer, cert_pem(signer.cert))
        self._manifests: tuple[int, list[manifests_.Manifest]] | None = None

    def push(self, files: Sequence[tuple[str, str]]) -> PushOutcome:
        """Validate ``(path, text)`` files, store a new revision and every node's catalog.

        The pushed files are checked on their own first, then as part of the
        whole revision they would make (so a require may point into a manifest
        stored earlier), then compiled for every node; any problem refuses the
        push whole and stores nothing.
        """
        pushed, errors = _load_each(files)
        if errors:
            return PushOutcome(0, errors, [])
        latest, previous_sources = self.store.latest_revision()
        previous = _load_sources(previous_sources)
        merged = _merge(previous, pushed)
        errors = manifests_.validate_set(merged) + compiler.collisions_within(pushed)
        if errors:
            return PushOutcome(0, errors, [])
        nodes = self.store.list_nodes()
        unmatched = _unmatched_names(pushed, {n.name for n in nodes})
        if latest and _sources(merged) == _sources(previous):
            return PushOutcome(latest, [], [], unchanged=True, unmatched_names=unmatched)
        try:
            # Compiled before the revision exists, so a conflict stores nothing.
            compiled = compiler.compile_fleet(merged, [(n.name, n.labels) for n in nodes], 0)
        except CompileError as exc:
            return PushOutcome(0, list(exc.problems), [])
        too_large = _too_large(compiled)
        if too_large:
            return PushOutcome(0, too_large, [])
        revision = self.store.add_revision(
            [ManifestSource(m.name, m.file, m.source) for m in merged], self.clock()
        )
        payloads = {
            name: dataclasses.replace(c, revision=revision).to_json()
            for name, c in compiled.items()
        }
        self.store.save_catalogs(revision, payloads)
        changed = _changed(previous, pushed)
        targeted = [
            n.name for n in nodes if any(m.target.matches(n.name, n.labels) for m in changed)
        ]
        return PushOutcome(revision, [], targeted, payloads, unmatched_names=unmatched)

    def signed_catalog(self, node_name: str) -> pb.SignedCatalog | None:
        """The node's catalog at the latest revision, compiled on first need."""
        found = self.prepare(node_name)
        return None if found is None else self.sign(*found)

    def prepare(self, node_name: str) -> tuple[int, bytes] | None:
        """The node's catalog at the latest revision (revision, payload), compiled if need be.

        None when nothing was pushed yet, the node is unknown, or its catalog
        cannot be compiled; the reason for the last is stored.
        """
        revision = self.store.latest_revision_id()
        if revision == 0:
            return None
        payload = self.store.catalog(node_name, revision)
        if payload is not None:
            return revision, payload
        node = self.store.node(node_name)
        if node is None:
            return None
        try:
            return revision, self._compile(self.manifests(revision), node, revision)
        except CompileError as exc:
            # A node enrolled after the push can make two manifests collide on
            # it. It keeps its last good catalog, and the reason is stored, so
            # `plumb nodes`, `report` and `compliance` show it until a push
            # fixes the manifests.
            problems = [str(p) for p in exc.problems]
            log.error("no catalog for node %s at revision %d: %s", node_name, revision, exc)
            self.store.record_catalog_problem(node_name, revision, problems, self.clock())
            return None

    def manifests(self, revision: int) -> list[manifests_.Manifest]:
        """The manifests of ``revision``, parsed; revisions are immutable, so kept once loaded."""
        cached = self._manifests
        if cached is None or cached[0] != revision:
            cached = self._manifests = (revision, _load_sources(self.store.revision(revision)))
        return cached[1]

    def targeted_by_name(self, node_name: str) -> list[str]:
        """The manifests of the latest revision that name ``node_name`` in ``target.names``.

        Enrollment keeps such a name for tokens that name it (server/tokens.py):
        its catalog was written for one host, secrets and all.
        """
        revision = self.store.latest_revision_id()
        if revision == 0:
            return []
        return sorted(m.name for m in self.manifests(revision) if node_name in m.target.names)

    def compliance(self) -> compliance_.Compliance:
        """Compliance at the latest revision (see server.compliance)."""
        revision = self.store.latest_revision_id()
        return compliance_.compute(
            revision,
            self.manifests(revision) if revision else [],
            self.store.list_nodes(),
            self.store.catalog_problems(revision),
            self.store.statuses(),
        )

    @property
    def signer(self) -> KeyPair:
        return self._signing[0]

    def use_signer(self, signer: KeyPair) -> None:
        """Sign with ``signer`` from now on (server/signer.py rotates it)."""
        self._signing = (signer, cert_pem(signer.cert))

    def sign(self, revision: int, payload: bytes) -> pb.SignedCatalog:
        signer, pem = self._signing
        return pb.SignedCatalog(
            revision=revision,
            payload=payload,
            signature=sign_payload(signer.key, payload),
            signer_pem=pem,
        )

    def _compile(
        self, merged: Sequence[manifests_.Manifest], node: NodeRow, revision: int
    ) -> bytes:
        catalog = compiler.compile_catalog(merged, node.name, node.labels, revision)
        too_large = _too_large({node.name: catalog})
        if too_large:  # a node enrolled after the push: like any compile problem
            raise CompileError(node.name, too_large)
        payload = catalog.to_json()
        self.store.save_catalogs(revision, {node.name: payload})
        return payload


def _load_sources(sources: Sequence[ManifestSource]) -> list[manifests_.Manifest]:
    # Stored manifests were valid when pushed; loading them again cannot fail
    # unless a kind's schema has since become stricter, which must be loud.
    return [manifests_.load(s.file, s.source) for s in sources]


def _load_each(
    files: Sequence[tuple[str, str]],
) -> tuple[list[manifests_.Manifest], list[ManifestError]]:
    """Each pushed file on its own: the set is checked once, merged with what is stored."""
    loaded: list[manifests_.Manifest] = []
    errors: list[ManifestError] = []
    for file, text in files:
        try:
            loaded.append(manifests_.load(file, text))
        except manifests_.ManifestInvalid as exc:
            errors.extend(exc.errors)
    return loaded, errors


def _merge(
    previous: Sequence[manifests_.Manifest], pushed: Sequence[manifests_.Manifest]
) -> list[manifests_.Manifest]:
    replaced = {m.name for m in pushed}
    return [m for m in previous if m.name not in replaced] + list(pushed)


def _too_large(compiled: Mapping[str, Catalog]) -> list[ManifestError]:
    """A catalog over MAX_CATALOG_BYTES would never reach its agent: refuse the push instead.

    Nodes that select the same manifests share one resources tuple (see
    server.compiler): one of them is measured for all, at revision 0, with
    room for the longest node name (64) and any revision number.
    """
    measured: dict[int, int] = {}
    big: list[tuple[int, str]] = []
    for node, catalog in compiled.items():
        size = measured.get(id(catalog.resources))
        if size is None:
            size = measured[id(catalog.resources)] = len(catalog.to_json()) + 96
        if size > MAX_CATALOG_BYTES:
            big.append((size, node))
    big.sort()
    if not big:
        return []
    size, node = big[-1]
    others = f" (and {len(big) - 1} more node(s))" if len(big) > 1 else ""
    message = (
        f"the catalog of node {node}{others} would be {size / 2**20:.1f} MiB, more than an "
        f"agent takes ({MAX_CATALOG_BYTES // 2**20} MiB): split the manifests, or keep large "
        "content out of them"
    )
    return [ManifestError("", 0, "", message)]


def _sources(manifests: Sequence[manifests_.Manifest]) -> dict[str, str]:
    """What makes two revisions the same desired state: each manifest's name and text."""
    return {m.name: m.source for m in manifests}


def _changed(
    previous: Sequence[manifests_.Manifest], pushed: Sequence[manifests_.Manifest]
) -> list[manifests_.Manifest]:
    """The pushed manifests that differ from the stored ones, and those they replace.

    A node's catalog changes exactly when one of these selects it: the new
    version adds or changes its resources, the old one's are being removed.
    """
    before = {m.name: m for m in previous}
    changed: list[manifests_.Manifest] = []
    for m in pushed:
        old = before.get(m.name)
        if old is None or old.source != m.source:
            changed.append(m)
            if old is not None:
                changed.append(old)
    return changed


def _unmatched_names(pushed: Sequence[manifests_.Manifest], enrolled: set[str]) -> list[str]:
    """Node names the pushed manifests target by name that are not enrolled (yet)."""
    return sorted({name for m in pushed for name in m.target.names if name not in enrolled})
