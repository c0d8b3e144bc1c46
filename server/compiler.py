"""The catalog compiler: what one node must look like at one revision.

A node gets every resource of every manifest whose target matches it, in
manifest order and then declaration order, so the same manifests always
give the same bytes to sign. Each resource carries its manifest's name, for
reports and compliance, and the mode it runs in: audit if its manifest or the
resource itself says audit, enforce only if neither does
(:meth:`server.manifest.Manifest.mode_of`).

``notify`` and ``subscribe`` are one relation written at either end; the
catalog carries it at the receiving end only, as the receiver's
``subscribe`` (its own entries first, then each resource that notifies it,
in catalog order, without repeats), because that is where the engine needs
it: when it reaches a resource, it looks at what that resource subscribes to.
``require`` is carried as written.

The set has already passed :func:`server.manifest.validate_set`; what can
still go wrong depends on the node, so it is checked here: two resources of
the node that manage one real object (:func:`collisions`: one id declared
twice, or the same path, package, unit or table under two ids), and a
resource that requires, notifies or subscribes to one which only a manifest
not targeting the node declares. Push
runs :func:`compile_fleet` over every known node and refuses a revision
whole if anything is wrong for any of them.

A catalog depends only on which manifests select the node, so nodes that
select the same manifests share one compilation: a push to a thousand web
servers compiles once.

Purged manifests (``plumb manifest rm NAME --purge``) still select nodes:
each of their resources whose kind is :class:`modules.base.Removable`
becomes its removal (the object made absent, ``Removable.removal``), after
every live resource of the catalog; a removal runs before the removals of
what it required (a file before its directory), and is left out when a live
resource of the node manages the same object (its new owner). Resources of
other kinds are left as they are, no longer managed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from modules import registry
from modules.base import Identity, Removable
from modules.catalog import Catalog, CatalogResource
from server.errors import CompileError, ManifestError
from server.manifest import RELATIONS, VERBS, Manifest, ResourceDecl
from server.targeting import Subject


@dataclasses.dataclass(frozen=True)
class DesiredState:
    """What a revision asks of the fleet: its manifests, and those it purges."""

    manifests: tuple[Manifest, ...] = ()
    purged: tuple[Manifest, ...] = ()

    def selection(self, node: Subject) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The indexes of the manifests, then of the purged ones, that select ``node``."""
        return (
            tuple(i for i, m in enumerate(self.manifests) if m.target.matches(node)),
            tuple(i for i, m in enumerate(self.purged) if m.target.matches(node)),
        )


def compile_catalog(state: DesiredState, node: Subject, revision: int) -> Catalog:
    """The catalog of ``node`` at ``revision``; CompileError lists every problem."""
    return compile_fleet(state, [node], revision)[node.name]


def compile_fleet(
    state: DesiredState, nodes: Iterable[Subject], revision: int, skip_problems: bool = False
) -> dict[str, Catalog]:
    """The catalog of every node; CompileError lists every problem of every
    group of nodes, in the order the groups first appear. With
    ``skip_problems``, nodes whose catalog cannot be compiled are left out
    instead (what a diff or an earlier revision needs)."""
    nodes = list(nodes)
    catalogs: dict[str, Catalog] = {}
    problems: list[ManifestError] = []
    for selection, names in _groups(state, nodes).items():
        resources, found = resources_of(state, selection, _phrase(names))
        problems.extend(found)
        if not found:
            catalogs.update(
                (n, Catalog(node=n, revision=revision, resources=resources)) for n in names
            )
    if problems and not skip_problems:
        raise CompileError(", ".join(n.name for n in nodes), problems)
    return catalogs


def resources_of(
    state: DesiredState, selection: tuple[tuple[int, ...], tuple[int, ...]], node: str = ""
) -> tuple[tuple[CatalogResource, ...], list[ManifestError]]:
    """The resources of a catalog of the manifests ``selection`` names (see
    :meth:`DesiredState.selection`), or the problems that keep it from being one."""
    live, purging = selection
    selected = [state.manifests[i] for i in live]
    problems = _problems(state.manifests, selected, node)
    if problems:
        return (), problems
    notifiers = _notifiers(selected)
    resources = [_resource(m, r, notifiers) for m in selected for r in m.resources]
    managed = {i for m in selected for r in m.resources for i in r.identities}
    taken = {r.id for r in resources}
    resources.extend(_removals([state.purged[i] for i in purging], managed, taken))
    return tuple(resources), []


def _groups(
    state: DesiredState, nodes: Iterable[Subject]
) -> dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]]:
    """Node names keyed by the manifests (and purged ones) that select them."""
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for node in nodes:
        groups.setdefault(state.selection(node), []).append(node.name)
    return groups


def _removals(
    purged: Sequence[Manifest], managed: set[Identity], taken: set[str]
) -> list[CatalogResource]:
    """The removals of the purged manifests' resources (see the module docstring).

    One that a live resource manages (its object, or its id) is left out, and
    of two purged manifests the first to remove an object does.
    """
    removals: list[CatalogResource] = []
    managed, taken = set(managed), set(taken)
    for m in purged:
        kept = {
            r.id: r
            for r in m.resources
            if removable(r) and not managed & set(r.identities) and r.id not in taken
        }
        for r in kept.values():
            managed.update(r.identities)
            taken.add(r.id)
        # A removal waits for the removals of what required it: reversed requires.
        required_by: dict[str, list[str]] = {}
        for r in kept.values():
            for wanted in r.require:
                if wanted in kept:
                    required_by.setdefault(wanted, []).append(r.id)
        for r in kept.values():
            kind = registry.get(r.kind)
            assert isinstance(kind, Removable)
            removals.append(
                CatalogResource(
                    kind=r.kind,
                    name=r.name,
                    spec=kind.removal(kind.parse(copy.deepcopy(dict(r.spec)))),
                    manifest=m.name,
                    mode=m.mode_of(r),
                    require=tuple(required_by.get(r.id, ())),
                    controls=r.controls,
                    timeout_s=r.timeout_s,
                )
            )
    return removals


def removable(decl: ResourceDecl) -> bool:
    """Whether purging ``decl``'s manifest removes its object (else it is left unmanaged)."""
    return isinstance(registry.get(decl.kind), Removable)


def _phrase(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} (and {len(names) - 1} more)"


def _notifiers(selected: Sequence[Manifest]) -> dict[str, list[str]]:
    """Each notified id → the ids that notify it, in catalog order."""
    notifiers: dict[str, list[str]] = {}
    for m in selected:
        for r in m.resources:
            for receiver in r.notify:
                notifiers.setdefault(receiver, []).append(r.id)
    return notifiers


def _resource(
    manifest: Manifest, decl: ResourceDecl, notifiers: Mapping[str, Sequence[str]]
) -> CatalogResource:
    return CatalogResource(
        kind=decl.kind,
        name=decl.name,
        # Catalogs of many nodes share one manifest; a copy keeps them independent.
        spec=copy.deepcopy(dict(decl.spec)),
        manifest=manifest.name,
        mode=manifest.mode_of(decl),
        require=decl.require,
        controls=decl.controls,
        subscribe=tuple(dict.fromkeys([*decl.subscribe, *notifiers.get(decl.id, ())])),
        timeout_s=decl.timeout_s,
        sensitive=decl.sensitive,
    )


def _problems(
    manifests: Sequence[Manifest], selected: Sequence[Manifest], node: str
) -> list[ManifestError]:
    owners: dict[str, tuple[Manifest, ResourceDecl]] = {}
    problems = collisions(selected, f"both targeting node {node}")
    for m in selected:
        for r in m.resources:
            owners.setdefault(r.id, (m, r))
    for m in selected:
        for r in m.resources:
            problems.extend(
                _missing(manifests, m, r, field, j, node)
                for field in RELATIONS
                for j, wanted in enumerate(r.relation(field)[0])
                if wanted not in owners
            )
    return problems


def collisions(manifests: Sequence[Manifest], where: str = "") -> list[ManifestError]:
    """Resources of ``manifests`` that would be one node's and manage one real object.

    Two declarations of one id, or two resources whose kinds say they manage
    the same thing (:meth:`modules.base.Kind.identities`: a path, a package, a
    unit, a table), whatever their kinds and names: on one host they would
    undo each other's work for ever. Each problem is placed at the later
    declaration and names both; ``where`` ends the message ("both targeting
    node web-1").
    """
    ids: dict[str, tuple[Manifest, ResourceDecl]] = {}
    objects: dict[Identity, tuple[Manifest, ResourceDecl]] = {}
    problems: list[ManifestError] = []
    suffix = f", {where}" if where else ""
    for m in manifests:
        for r in m.resources:
            if r.id in ids:
                first, decl = ids[r.id]
                message = f"{r.id} is declared by {first.file}:{decl.line} and {m.file}:{r.line}"
                problems.append(ManifestError(m.file, r.line, r.field("name"), message + suffix))
                continue
            ids[r.id] = (m, r)
            for identity in r.identities:
                if identity in objects:
                    first, decl = objects[identity]
                    message = (
                        f"{identity} is managed by both {decl.id} ({first.file}:{decl.line})"
                        f" and {r.id} ({m.file}:{r.line}); one real object needs one owner"
                    )
                    problems.append(
                        ManifestError(m.file, r.line, r.field("spec"), message + suffix)
                    )
                else:
                    objects[identity] = (m, r)
    return problems


def collisions_within(manifests: Sequence[Manifest]) -> list[ManifestError]:
    """:func:`collisions` inside each manifest alone: refused even before any node matches it."""
    return [problem for m in manifests for problem in collisions([m])]


def _missing(
    manifests: Sequence[Manifest],
    manifest: Manifest,
    decl: ResourceDecl,
    field: str,
    index: int,
    node: str,
) -> ManifestError:
    ids, lines = decl.relation(field)
    wanted, verb = ids[index], VERBS[field]
    where = f"{decl.id} ({manifest.file}:{lines[index]})"
    elsewhere = [f"{m.file}:{r.line}" for m in manifests for r in m.resources if r.id == wanted]
    if not elsewhere:
        message = f"{where} {verb} {wanted}, which no manifest declares"
    else:
        message = (
            f"{where} {verb} {wanted}, declared only by {', '.join(elsewhere)},"
            f" whose target does not include node {node}"
        )
    return ManifestError(manifest.file, lines[index], decl.field(field, index), message)
