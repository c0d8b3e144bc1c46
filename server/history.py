"""What changed between two revisions: the manifests' text, then each node's catalog.

Pure functions over what the store holds; ``plumb history`` and ``plumb
diff`` are built from them (server/fleet.py gathers the inputs).

A revision's content hash is over its manifests' names and texts only, so
two revisions with the same desired state have the same hash whatever made
them (a push, a rollback) and whoever did.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from modules.catalog import CatalogResource

#: What a change to one manifest or one resource is.
ADDED, REMOVED, CHANGED = "added", "removed", "changed"


class Source(Protocol):
    """A manifest as a revision stores it (server.store.ManifestSource)."""

    @property
    def name(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def source(self) -> str: ...


def content_hash(sources: Mapping[str, str]) -> str:
    """SHA-256 (hex) of a manifest set, given as name → text; order does not matter."""
    canonical = json.dumps(sorted(sources.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ManifestChange:
    """One manifest added, removed or changed between two revisions."""

    name: str
    change: str  # ADDED, REMOVED, CHANGED
    before: str  # its text before ('' when added)
    after: str  # its text after ('' when removed)
    before_file: str = ""
    after_file: str = ""

    def unified(self) -> str:
        """The text diff, as ``diff -u`` prints it, labelled with revision-less file names."""
        lines = difflib.unified_diff(
            self.before.splitlines(keepends=True),
            self.after.splitlines(keepends=True),
            fromfile=f"a/{self.before_file or self.after_file}" if self.before else "/dev/null",
            tofile=f"b/{self.after_file or self.before_file}" if self.after else "/dev/null",
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def manifest_changes(before: Iterable[Source], after: Iterable[Source]) -> list[ManifestChange]:
    """The manifests that differ, by name, in name order."""
    old = {m.name: m for m in before}
    new = {m.name: m for m in after}
    changes = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is not None and b is not None and a.source == b.source:
            continue
        change = ADDED if a is None else REMOVED if b is None else CHANGED
        changes.append(
            ManifestChange(
                name,
                change,
                a.source if a else "",
                b.source if b else "",
                a.file if a else "",
                b.file if b else "",
            )
        )
    return changes


@dataclasses.dataclass(frozen=True)
class ResourceChange:
    """One resource that is added, removed or changed on some nodes' catalogs."""

    resource_id: str
    change: str  # ADDED, REMOVED, CHANGED
    #: For CHANGED: which of its declared fields differ (spec fields by name,
    #: then mode, require, subscribe, ...), sorted.
    fields: tuple[str, ...]
    nodes: tuple[str, ...]


def resource_changes(
    before: Mapping[str, Sequence[CatalogResource]],
    after: Mapping[str, Sequence[CatalogResource]],
) -> list[ResourceChange]:
    """Per resource, the nodes whose catalog adds, removes or changes it.

    ``before`` and ``after`` map a node to its catalog's resources; a node
    missing from one side has none there. Sorted by resource id, then
    change; nodes in name order. Nodes compiled alike share one resources
    tuple (server/compiler.py), so each pair of tuples is compared once.
    """
    compared: dict[tuple[int, int], list[tuple[str, str, tuple[str, ...]]]] = {}
    grouped: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    for node in sorted(before.keys() | after.keys()):
        old, new = before.get(node, ()), after.get(node, ())
        pair = (id(old), id(new))
        if pair not in compared:
            compared[pair] = _compare(old, new)
        for key in compared[pair]:
            grouped.setdefault(key, []).append(node)
    return [
        ResourceChange(rid, change, fields, tuple(nodes))
        for (rid, change, fields), nodes in sorted(grouped.items())
    ]


def _compare(
    before: Sequence[CatalogResource], after: Sequence[CatalogResource]
) -> list[tuple[str, str, tuple[str, ...]]]:
    old = {r.id: r.to_dict() for r in before}
    new = {r.id: r.to_dict() for r in after}
    found: list[tuple[str, str, tuple[str, ...]]] = []
    for rid in old.keys() | new.keys():
        a, b = old.get(rid), new.get(rid)
        if a is None:
            found.append((rid, ADDED, ()))
        elif b is None:
            found.append((rid, REMOVED, ()))
        else:
            fields = _fields_changed(a, b)
            if fields:
                found.append((rid, CHANGED, fields))
    return found


def _fields_changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, ...]:
    spec_a, spec_b = a.get("spec", {}), b.get("spec", {})
    fields = {k for k in spec_a.keys() | spec_b.keys() if spec_a.get(k) != spec_b.get(k)}
    fields |= {k for k in (a.keys() | b.keys()) - {"spec", "kind", "name"} if a.get(k) != b.get(k)}
    return tuple(sorted(fields))
