"""Reports are checked against what the node was given, not believed blindly.

A node reports on the catalog it was given at a revision, and on nothing
else. So before a report is stored, each result must name a resource of the
node's catalog at the report's revision, and its manifest and controls are
taken from that catalog, never from the report: a node (or whoever holds its
key) cannot invent resources, manifests or controls to lift compliance, nor
fill ``plumb drift`` with events of resources it does not have. Results that
name anything else are dropped and logged; a report of a revision the node
was never given is not stored at all (it is acknowledged, so a confused
agent does not resend it forever, and logged).

Catalogs never change once compiled, so what each (node, revision) was given
is kept in a small cache; a miss reads the store in a thread. A push fills
it for the catalogs it sends (:meth:`GivenCatalogs.remember`): the reports
of a push's run then find their catalog in memory, not a thousand store
reads at once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Mapping

from modules.catalog import Catalog
from protos import plumb_pb2 as pb
from server.store import Store

#: (node, revision) pairs whose catalogs are kept parsed: a fleet reports
#: mostly on the latest revision, so one entry per node and a margin.
CACHED_CATALOGS = 20_000


@dataclasses.dataclass(frozen=True)
class Given:
    """One node's catalog at one revision: each resource id, with its manifest and controls."""

    resources: Mapping[str, tuple[str, tuple[str, ...]]]

    @classmethod
    def of(cls, payload: bytes) -> Given:
        catalog = Catalog.from_json(payload)
        return cls({r.id: (r.manifest, tuple(r.controls)) for r in catalog.resources})


def believed(report: pb.Report, given: Given) -> tuple[pb.Report, list[str]]:
    """``report`` as the server believes it, and the resource ids it dropped; pure.

    Only results for resources the node was given are kept, each with the
    manifest and controls of its catalog.
    """
    kept: list[pb.ResourceResult] = []
    dropped: list[str] = []
    corrected = False
    for result in report.results:
        known = given.resources.get(result.id)
        if known is None:
            dropped.append(result.id)
            continue
        manifest, controls = known
        if result.manifest != manifest or tuple(result.controls) != controls:
            fixed = pb.ResourceResult()
            fixed.CopyFrom(result)
            fixed.manifest = manifest
            del fixed.controls[:]
            fixed.controls.extend(controls)
            result, corrected = fixed, True
        kept.append(result)
    if not dropped and not corrected:
        return report, []
    checked = pb.Report()
    checked.CopyFrom(report)
    del checked.results[:]
    checked.results.extend(kept)
    return checked, dropped


class GivenCatalogs:
    """What each node was given at each revision, read from the store once."""

    def __init__(self, store: Store, size: int = CACHED_CATALOGS) -> None:
        self.store = store
        self.size = size
        self._cache: collections.OrderedDict[tuple[str, int], Given | None] = (
            collections.OrderedDict()
        )

    def remember(self, givens: Mapping[tuple[str, int], Given]) -> None:
        """Keep what these nodes were just given (from the event loop: not thread-safe)."""
        for key, given in givens.items():
            self._cache[key] = given
            self._cache.move_to_end(key)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)

    async def of(self, node: str, revision: int) -> Given | None:
        """Node ``node``'s catalog at ``revision``; None if it was never given one."""
        key = (node, revision)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        payload = await asyncio.to_thread(self.store.catalog, node, revision)
        given = Given.of(payload) if payload is not None else None
        if given is not None:  # a catalog may still be compiled later: "never" is not kept
            self._cache[key] = given
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return given
