"""The catalog compiler: what one node must look like at one revision.

A node gets every resource of every manifest whose target matches it, in
manifest order and then declaration order, so the same manifests always
give the same bytes to sign. Each resource carries its manifest's name and
mode, for reports and compliance.

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
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

from modules.base import Identity
from modules.catalog import Catalog, CatalogResource
from server.errors import CompileError, ManifestError
from server.manifest import RELATIONS, VERBS, Manifest, ResourceDecl


def compile_catalog(
    manifests: Sequence[Manifest], node: str, labels: Mapping[str, str], revision: int
) -> Catalog:
    """The catalog of ``node`` at ``revision``; CompileError lists every problem."""
    return compile_fleet(manifests, [(node, labels)], revision)[node]


def compile_fleet(
    manifests: Sequence[Manifest], nodes: Iterable[tuple[str, Mapping[str, str]]], revision: int
) -> dict[str, Catalog]:
    """The catalog of every ``(node, labels)``; CompileError lists every problem of every
    group of nodes, in the order the groups first appear."""
    nodes = list(nodes)
    catalogs: dict[str, Catalog] = {}
    problems: list[ManifestError] = []
    for selection, names in _groups(manifests, nodes).items():
        selected = [manifests[i] for i in selection]
        found = _problems(manifests, selected, _phrase(names))
        problems.extend(found)
        if not found:
            notifiers = _notifiers(selected)
            resources = tuple(_resource(m, r, notifiers) for m in selected for r in m.resources)
            catalogs.update(
                (n, Catalog(node=n, revision=revision, resources=resources)) for n in names
            )
    if problems:
        raise CompileError(", ".join(n for n, _ in nodes), problems)
    return catalogs


def _groups(
    manifests: Sequence[Manifest], nodes: Iterable[tuple[str, Mapping[str, str]]]
) -> dict[tuple[int, ...], list[str]]:
    """Node names keyed by the indexes of the manifests that select them."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for node, labels in nodes:
        key = tuple(i for i, m in enumerate(manifests) if m.target.matches(node, labels))
        groups.setdefault(key, []).append(node)
    return groups


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
        mode=manifest.mode,
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
