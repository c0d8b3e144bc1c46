"""Desired state for the fleet: new revisions, compiled and signed catalogs.

A push names manifest files. The new revision is the previous revision's
manifest set with those manifests added or replaced (by manifest name), so a
revision always holds the complete desired state and is immutable once
stored. Removing a manifest (optionally purging what it managed) and rolling
back to an earlier revision's content make new revisions the same way. Each
is validated and compiled for every node before anything is stored: a
problem refuses it whole.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from modules.catalog import Catalog, CatalogResource
from protos import plumb_pb2 as pb
from protos.limits import MAX_CATALOG_BYTES
from server import compiler, targeting
from server import compliance as compliance_
from server import history as history_
from server import manifest as manifests_
from server.compiler import DesiredState
from server.errors import CompileError, ManifestError, UnknownNode
from server.pki import KeyPair, cert_pem, sign_payload
from server.store import (
    ManifestSource,
    NewRollout,
    NodeRow,
    RevisionMeta,
    RevisionRow,
    Selected,
    Store,
    WaiverRow,
)
from server.targeting import Subject

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
    #: Pushed manifests whose target selects no enrolled node at all.
    unmatched_manifests: list[str] = dataclasses.field(default_factory=list)
    #: Resource ids that no longer are in some node's catalog and are left as
    #: they are (a removed manifest, or a purged one's resources of a kind
    #: that cannot be removed): {resource id: nodes}.
    released: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: Resource ids some node's agent will remove (a purge): {resource id: nodes}.
    purging: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: A staged push: the nodes its rollout hands it to, batch by batch (the
    #: others get it at once); None: every node at once.
    staged: frozenset[str] | None = None


class Fleet:
    def __init__(
        self, store: Store, signer: KeyPair, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.clock = clock
        # One attribute: a catalog signed during a rotation names the key that signed it.
        self._signing = (signer, cert_pem(signer.cert))
        self._states: dict[int, DesiredState] = {}
        #: The revision a staged rollout keeps a node on meanwhile (server/rollout.py);
        #: None: the latest.
        self.pinned: Callable[[str], int | None] = lambda node: None
        #: After how many of its run intervals without a report a node is "no report".
        self.no_report_after_runs: float = compliance_.NO_REPORT_AFTER_RUNS

    def push(
        self,
        files: Sequence[tuple[str, str]],
        meta: RevisionMeta | None = None,
        staged: Staging | None = None,
    ) -> PushOutcome:
        """Validate ``(path, text)`` files, store a new revision and every node's catalog.

        The pushed files are checked on their own first, then as part of the
        whole revision they would make (so a require may point into a manifest
        stored earlier), then compiled for every node; any problem refuses the
        push whole and stores nothing.
        """
        found = self._candidate(files)
        if isinstance(found, list):
            return PushOutcome(0, found, [])
        latest, before, after, pushed = found
        return self._propose(latest, before, after, meta or RevisionMeta(), pushed, staged)

    def _candidate(
        self, files: Sequence[tuple[str, str]]
    ) -> tuple[int, DesiredState, DesiredState, list[manifests_.Manifest]] | list[ManifestError]:
        """The latest revision, its state, the state pushing ``files`` makes and the
        pushed manifests; or what is wrong with the files on their own."""
        pushed, errors = _load_each(files)
        errors += compiler.collisions_within(pushed)
        if errors:
            return errors
        latest, before = self.latest_state()
        names = {m.name for m in pushed}
        after = DesiredState(
            tuple(_merge(before.manifests, pushed)),
            # Pushing a manifest of a purged one's name ends the purge: it owns them again.
            tuple(m for m in before.purged if m.name not in names),
        )
        return latest, before, after, pushed

    def plan(
        self,
        files: Sequence[tuple[str, str]],
        selector: targeting.Selector | None = None,
        removal: tuple[str, bool] | None = None,
    ) -> PlanOutcome:
        """The catalog pushing ``files`` would give each node ``selector`` picks (all: None).

        Validated and compiled as a push is, so a plan is refused for what a
        push would be refused for; nothing is stored. No files: the latest
        revision's catalogs, for a dry run of what a run would repair now.
        ``removal`` (a manifest's name, and whether to purge it) plans
        ``plumb manifest rm`` instead.
        """
        if removal is not None:
            without = self._without(*removal)
            if isinstance(without, list):
                return PlanOutcome(0, without, {})
            latest, _, after = without
            unchanged = False
        elif files:
            found = self._candidate(files)
            if isinstance(found, list):
                return PlanOutcome(0, found, {})
            latest, before, after, _ = found
            errors = manifests_.validate_set(after.manifests)
            if errors:
                return PlanOutcome(latest, errors, {})
            unchanged = bool(latest) and _same(before, after)
        else:
            latest, after = self.latest_state()
            unchanged = True
        subjects = [n.subject for n in self.store.list_nodes()]
        chosen = [s for s in subjects if selector is None or selector.matches(s)]
        try:
            compiled = compiler.compile_fleet(after, chosen, 0)
        except CompileError as exc:
            return PlanOutcome(latest, list(exc.problems), {})
        too_large = _too_large(compiled)
        if too_large:
            return PlanOutcome(latest, too_large, {})
        # At the revision it would become: what the agent's replay check compares.
        candidate = latest if unchanged else latest + 1
        payloads = {
            name: dataclasses.replace(c, revision=candidate).to_json()
            for name, c in compiled.items()
        }
        return PlanOutcome(latest, [], payloads, candidate, unchanged=unchanged and bool(files))

    def remove(self, name: str, purge: bool, meta: RevisionMeta | None = None) -> PushOutcome:
        """A new revision without manifest ``name``; with ``purge``, its objects removed.

        Removing a purged manifest's name again ends its purge: what is left
        of its objects is no longer managed.
        """
        found = self._without(name, purge)
        if isinstance(found, list):
            return PushOutcome(0, found, [])
        latest, before, after = found
        return self._propose(latest, before, after, meta or RevisionMeta(origin="remove"))

    def _without(
        self, name: str, purge: bool
    ) -> tuple[int, DesiredState, DesiredState] | list[ManifestError]:
        """The latest revision, its state and the state without manifest ``name``."""
        latest, before = self.latest_state()
        live = [m for m in before.manifests if m.name != name]
        purged = [m for m in before.purged if m.name != name]
        if len(live) == len(before.manifests) and len(purged) == len(before.purged):
            message = f"no manifest is named {name!r} at revision {latest}" + (
                " ('plumb manifests' lists them)" if latest else ": nothing was pushed yet"
            )
            return [ManifestError("", 0, "", message)]
        if purge:
            purged += [m for m in before.manifests if m.name == name]
        return latest, before, DesiredState(tuple(live), tuple(purged))

    def rollback(
        self,
        to: int,
        name: str | None = None,
        meta: RevisionMeta | None = None,
        staged: Staging | None = None,
    ) -> PushOutcome:
        """A new revision with revision ``to``'s content: all of it, or manifest ``name``'s.

        For one manifest that did not exist at ``to``, that is its removal
        (without purge).
        """
        latest, before = self.latest_state()
        if not 0 < to <= latest:
            message = f"there is no revision {to}: revisions go from 1 to {latest}"
            return PushOutcome(0, [ManifestError("", 0, "", message)], [])
        old = self.state(to)
        if name is None:
            after = old
        else:
            known = {m.name for m in (*old.manifests, *before.manifests, *before.purged)}
            if name not in known:
                message = f"no manifest is named {name!r} at revision {to} nor at {latest}"
                return PushOutcome(0, [ManifestError("", 0, "", message)], [])
            after = DesiredState(
                tuple(
                    [m for m in before.manifests if m.name != name]
                    + [m for m in old.manifests if m.name == name]
                ),
                tuple(
                    [m for m in before.purged if m.name != name]
                    + [m for m in old.purged if m.name == name]
                ),
            )
        meta = meta or RevisionMeta(origin="rollback")
        return self._propose(latest, before, after, meta, staged=staged)

    def _propose(
        self,
        latest: int,
        before: DesiredState,
        after: DesiredState,
        meta: RevisionMeta,
        pushed: Sequence[manifests_.Manifest] = (),
        staged: Staging | None = None,
    ) -> PushOutcome:
        """Store ``after`` as the revision after ``latest`` (whose state is ``before``);
        ``staged(latest, targeted nodes)`` makes its rollout, stored with it."""
        errors = manifests_.validate_set(after.manifests)
        if errors:
            return PushOutcome(0, errors, [])
        nodes = self.store.list_nodes()
        subjects = [n.subject for n in nodes]
        unmatched = _unmatched_names(pushed, {n.name for n in nodes})
        unmatched_manifests = sorted(
            m.name for m in pushed if not any(m.target.matches(s) for s in subjects)
        )
        if latest and _same(before, after):
            return PushOutcome(
                latest,
                [],
                [],
                unchanged=True,
                unmatched_names=unmatched,
                unmatched_manifests=unmatched_manifests,
            )
        try:
            # Compiled before the revision exists, so a conflict stores nothing.
            compiled = compiler.compile_fleet(after, subjects, 0)
        except CompileError as exc:
            return PushOutcome(0, list(exc.problems), [])
        too_large = _too_large(compiled)
        if too_large:
            return PushOutcome(0, too_large, [])
        # What each node had: its catalog at the latest revision, as compiled for it now.
        previous = compiler.compile_fleet(before, subjects, 0, skip_problems=True)
        changes = history_.resource_changes(_resources(previous), _resources(compiled))
        targeted = sorted({n for c in changes for n in c.nodes})
        rollout = staged(latest, targeted) if staged is not None else None
        revision = self.store.add_revision(
            [ManifestSource(m.name, m.file, m.source) for m in after.manifests],
            self.clock(),
            dataclasses.replace(
                meta, purged=tuple(ManifestSource(m.name, m.file, m.source) for m in after.purged)
            ),
            rollout,
        )
        self._states[revision] = after
        payloads = {
            name: dataclasses.replace(c, revision=revision).to_json()
            for name, c in compiled.items()
        }
        self.store.save_catalogs(
            revision, payloads, {s.name: _selected(after, s) for s in subjects}
        )
        return PushOutcome(
            revision,
            [],
            targeted,
            payloads,
            unmatched_names=unmatched,
            unmatched_manifests=unmatched_manifests,
            released=_released(changes),
            purging=_purging(before, after, compiled),
            staged=frozenset(n for batch in rollout.batches for n in batch) if rollout else None,
        )

    def signed_catalog(
        self, node_name: str, facts: Mapping[str, str] | None = None
    ) -> pb.SignedCatalog | None:
        """The node's catalog at the latest revision, compiled on first need (see prepare)."""
        found = self.prepare(node_name, facts)
        return None if found is None else self.sign(*found)

    def prepare(
        self, node_name: str, facts: Mapping[str, str] | None = None
    ) -> tuple[int, bytes] | None:
        """The node's catalog at the latest revision (revision, payload), compiled if need be.

        ``facts`` are what its hello says now (the store's may be older). A
        catalog compiled when other manifests selected the node (its facts or
        labels changed since) is compiled again. None when nothing was pushed
        yet, the node is unknown, or its catalog cannot be compiled; the
        reason for the last is stored.
        """
        revision, state = self.latest_state()
        if revision == 0:
            return None
        pinned = self.pinned(node_name)
        if pinned is not None:
            revision, state = pinned, self.state(pinned)
        node = self.store.node(node_name)
        if node is None:
            return None
        subject = node.subject
        if facts is not None:
            subject = dataclasses.replace(subject, facts=dict(facts))
        selected = _selected(state, subject)
        stored = self.store.catalog_entry(node_name, revision)
        if stored is not None and stored[1] == selected:
            return revision, stored[0]
        try:
            payload = self._compile(state, subject, revision)
        except CompileError as exc:
            # A node enrolled after the push can make two manifests collide on
            # it. It keeps its last good catalog, and the reason is stored, so
            # `plumb nodes`, `report` and `compliance` show it until a push
            # fixes the manifests.
            problems = [str(p) for p in exc.problems]
            log.error("no catalog for node %s at revision %d: %s", node_name, revision, exc)
            self.store.record_catalog_problem(node_name, revision, problems, self.clock())
            return None
        if stored is None:
            self.store.save_catalogs(revision, {node_name: payload}, {node_name: selected})
        else:
            log.info("node %s is selected by other manifests now: compiled again", node_name)
            self.store.replace_catalog(node_name, revision, payload, selected)
        return revision, payload

    def state(self, revision: int) -> DesiredState:
        """What ``revision`` asks, parsed; revisions are immutable, so kept once loaded."""
        found = self._states.get(revision)
        if found is None:
            row = self.store.revision_row(revision)
            found = (
                DesiredState()
                if row is None
                else DesiredState(
                    tuple(_load_sources(row.manifests)), tuple(_load_sources(row.purged))
                )
            )
            # The latest two are all pushes and sessions ask for; older ones
            # (history, diff, rollback) are parsed again when asked.
            self._states = {r: s for r, s in self._states.items() if r >= revision - 1}
            self._states[revision] = found
        return found

    def latest_state(self) -> tuple[int, DesiredState]:
        revision = self.store.latest_revision_id()
        return revision, self.state(revision) if revision else DesiredState()

    def targeted_by_name(self, node_name: str) -> list[str]:
        """The manifests of the latest revision that name ``node_name`` in ``target.names``.

        Enrollment keeps such a name for tokens that name it (server/tokens.py):
        its catalog was written for one host, secrets and all.
        """
        _, state = self.latest_state()
        return sorted(m.name for m in state.manifests if node_name in m.target.names)

    def add_waiver(
        self,
        control: str | None,
        resource_id: str | None,
        target: str | None,
        reason: str,
        expires_at: float,
        approver: str,
    ) -> WaiverRow:
        """Store a waiver; ValueError saying why one is refused.

        It names exactly one control or one resource, which the latest
        revision must have (a waiver of nothing would hide a typo), a
        reason, and an expiry in the future; ``target`` must be a selector.
        """
        now = self.clock()
        if (control is None) == (resource_id is None):
            raise ValueError("a waiver names a control (--control) or a resource (--resource)")
        if not reason.strip():
            raise ValueError("a waiver says why (--reason): an auditor will ask")
        if expires_at <= now:
            raise ValueError("a waiver expires in the future (--expires): this one never holds")
        if target is not None:
            targeting.parse(target)  # SelectorError (a ValueError) says where
        revision, state = self.latest_state()
        declared = [r for m in state.manifests for r in m.resources]
        if control is not None and not any(control in r.controls for r in declared):
            raise ValueError(
                f"no resource of revision {revision} has the control {control!r}: "
                "a waiver must name something that exists"
            )
        if resource_id is not None and not any(r.id == resource_id for r in declared):
            raise ValueError(
                f"revision {revision} has no resource {resource_id!r}: "
                "a waiver must name something that exists"
            )
        row = WaiverRow(0, control, resource_id, target, reason, approver, now, expires_at)
        return self.store.add_waiver(row)

    def waivers(self) -> list[compliance_.Waiver]:
        return [
            compliance_.Waiver(
                w.id,
                w.control,
                w.resource_id,
                targeting.parse(w.target) if w.target else None,
                w.expires_at,
                w.revoked_at,
            )
            for w in self.store.waivers()
        ]

    def compliance(self, selector: targeting.Selector | None = None) -> compliance_.Compliance:
        """Compliance at the latest revision (see server.compliance), of the nodes
        ``selector`` picks (None: all)."""
        revision, state = self.latest_state()
        nodes = self.store.list_nodes()
        return compliance_.compute(
            revision,
            state,
            [n for n in nodes if selector is None or selector.matches(n.subject)],
            self.store.catalog_problems(revision),
            self.store.statuses(),
            self.clock(),
            self.no_report_after_runs,
            self.waivers(),
        )

    def manifests(self) -> tuple[int, list[ManifestView], list[str]]:
        """The latest revision, its manifests as ``plumb manifests`` shows them, and the
        names of the purged manifests whose objects are being removed."""
        revision, state = self.latest_state()
        subjects = [n.subject for n in self.store.list_nodes()]
        last_change = self._last_changes({m.name for m in state.manifests})
        views = [
            ManifestView(
                m,
                tuple(s.name for s in subjects if m.target.matches(s)),
                last_change[m.name],
            )
            for m in sorted(state.manifests, key=lambda m: m.name)
        ]
        return revision, views, sorted(m.name for m in state.purged)

    def _last_changes(self, names: set[str]) -> dict[str, RevisionRow]:
        """For each manifest name, the newest revision that added or changed it."""
        found: dict[str, RevisionRow] = {}
        for change in self._changes():
            if not names - found.keys():
                break
            for name in {*change.added, *change.changed} & names:
                found.setdefault(name, change.row)
        return found

    def relabel(self, node_name: str, put: Mapping[str, str], remove: Sequence[str]) -> Relabel:
        """Change a node's labels; its catalog is compiled again if other manifests select it.

        UnknownNode if there is no such node; ValueError naming the label
        for a label that cannot be set (see server.targeting.label_problem).
        """
        for key, value in put.items():
            problem = targeting.label_problem(key, value)
            if problem:
                raise ValueError(problem)
        changed = self.store.set_labels(node_name, put, remove)
        if changed is None:
            raise UnknownNode(node_name)
        old, new = changed
        revision, state = self.latest_state()
        before, after = _selected(state, old.subject), _selected(state, new.subject)
        if revision == 0 or before == after:
            return Relabel(new, before, after, None)
        return Relabel(new, before, after, self.prepare(node_name))

    def history(self, limit: int, manifest: str | None = None) -> list[RevisionChange]:
        """The newest ``limit`` revisions (that changed ``manifest``, if given), newest first."""
        found: list[RevisionChange] = []
        for change in self._changes():
            if len(found) == limit:
                break
            if manifest is None or manifest in change.names:
                found.append(change)
        return found

    def _changes(self) -> Iterator[RevisionChange]:
        """Every revision with what it changed, newest first, read 64 at a time."""
        before: int | None = None
        while True:
            rows = self.store.revision_rows(64, before)
            if not rows:
                return
            older = self.store.revision_row(rows[-1].id - 1) if rows[-1].id > 1 else None
            for row, parent in zip(rows, [*rows[1:], older], strict=True):
                yield RevisionChange.between(parent, row)
            before = rows[-1].id

    def diff(
        self, old: int, new: int
    ) -> tuple[list[history_.ManifestChange], list[history_.ResourceChange]]:
        """What changes from revision ``old`` to ``new``: manifests, then each enrolled node's
        catalog (compiled for the nodes as they are now)."""
        a, b = self.state(old), self.state(new)
        subjects = [n.subject for n in self.store.list_nodes()]
        texts = history_.manifest_changes(
            _redacted(a.manifests) + _redacted(a.purged, purged=True),
            _redacted(b.manifests) + _redacted(b.purged, purged=True),
        )
        resources = history_.resource_changes(
            _resources(compiler.compile_fleet(a, subjects, 0, skip_problems=True)),
            _resources(compiler.compile_fleet(b, subjects, 0, skip_problems=True)),
        )
        return texts, resources

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

    def _compile(self, state: DesiredState, node: Subject, revision: int) -> bytes:
        catalog = compiler.compile_catalog(state, node, revision)
        too_large = _too_large({node.name: catalog})
        if too_large:  # a node enrolled after the push: like any compile problem
            raise CompileError(node.name, too_large)
        return catalog.to_json()


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


def _unmatched_names(pushed: Sequence[manifests_.Manifest], enrolled: set[str]) -> list[str]:
    """Node names the pushed manifests target by name that are not enrolled (yet)."""
    return sorted({name for m in pushed for name in m.target.names if name not in enrolled})


def _same(a: DesiredState, b: DesiredState) -> bool:
    """Whether two states ask the same: each manifest's and purged manifest's name and text."""
    return _texts(a.manifests) == _texts(b.manifests) and _texts(a.purged) == _texts(b.purged)


def _texts(manifests: Sequence[manifests_.Manifest]) -> dict[str, str]:
    return {m.name: m.source for m in manifests}


def _selected(state: DesiredState, node: Subject) -> Selected:
    live, purging = state.selection(node)
    return Selected(
        tuple(state.manifests[i].name for i in live), tuple(state.purged[i].name for i in purging)
    )


def _resources(compiled: Mapping[str, Catalog]) -> dict[str, tuple[CatalogResource, ...]]:
    return {node: catalog.resources for node, catalog in compiled.items()}


def _released(changes: Sequence[history_.ResourceChange]) -> dict[str, list[str]]:
    """Resources gone from nodes' catalogs (a removal keeps the id): left as they are."""
    return {c.resource_id: list(c.nodes) for c in changes if c.change == history_.REMOVED}


def _purging(
    before: DesiredState, after: DesiredState, compiled: Mapping[str, Catalog]
) -> dict[str, list[str]]:
    """The removals this revision starts: purged by it, not by an earlier revision."""
    new = {m.name for m in after.purged} - {m.name for m in before.purged}
    purging: dict[str, list[str]] = {}
    for node, catalog in sorted(compiled.items()):
        for r in catalog.resources:
            if r.manifest in new:
                purging.setdefault(r.id, []).append(node)
    return purging


def _redacted(
    manifests: Sequence[manifests_.Manifest], purged: bool = False
) -> list[ManifestSource]:
    """Manifests as a diff may show them: sensitive resources' lines replaced (see
    :func:`server.manifest.redacted`); a purged one under ``NAME (purged)``."""
    return [
        ManifestSource(f"{m.name} (purged)" if purged else m.name, m.file, manifests_.redacted(m))
        for m in manifests
    ]


#: Makes a new revision's rollout from the latest revision and the nodes the
#: revision changes (server/rollout.py Settings.new_rollout).
Staging = Callable[[int, list[str]], NewRollout]


@dataclasses.dataclass(frozen=True)
class PlanOutcome:
    base_revision: int  # the latest revision, which the plan is against
    errors: list[ManifestError]  # non-empty: a push of these files would be refused
    catalogs: dict[str, bytes]  # node -> its candidate catalog's payload
    revision: int = 0  # the candidate catalogs' revision: the one a push would store
    #: The files are identical to the latest revision's manifests.
    unchanged: bool = False


@dataclasses.dataclass(frozen=True)
class ManifestView:
    """One manifest of the latest revision, as ``plumb manifests`` shows it."""

    manifest: manifests_.Manifest
    nodes: tuple[str, ...]  # the enrolled nodes it selects now
    changed_in: RevisionRow  # the newest revision that added or changed it


@dataclasses.dataclass(frozen=True)
class Relabel:
    """What relabelling a node did: its row now, and what selected it before and after."""

    node: NodeRow
    before: Selected
    after: Selected
    #: Its new catalog (revision, payload) when the manifests that select it
    #: changed and it compiled; None otherwise (see :meth:`Fleet.prepare`).
    catalog: tuple[int, bytes] | None


@dataclasses.dataclass(frozen=True)
class RevisionChange:
    """One revision as ``plumb history`` shows it: what it records and what it changed."""

    row: RevisionRow
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    #: Manifests this revision purged (removed with their objects).
    purged: tuple[str, ...]

    @property
    def names(self) -> set[str]:
        return {*self.added, *self.changed, *self.removed, *self.purged}

    @classmethod
    def between(cls, parent: RevisionRow | None, row: RevisionRow) -> RevisionChange:
        old = {m.name: m.source for m in parent.manifests} if parent else {}
        new = {m.name: m.source for m in row.manifests}
        purged_before = {m.name for m in parent.purged} if parent else set()
        purged = tuple(sorted({m.name for m in row.purged} - purged_before))
        return cls(
            row,
            added=tuple(sorted(new.keys() - old.keys())),
            changed=tuple(sorted(n for n in new.keys() & old.keys() if new[n] != old[n])),
            removed=tuple(sorted(old.keys() - new.keys() - set(purged))),
            purged=purged,
        )
