"""What a plan shows: the nodes' dry runs of their candidate catalogs, summed up per resource.

Pure functions over the nodes' answers (server/admin.py gathers them). In a
dry run a resource that would change is ``drifted``; one whose outcome
depends on an earlier change in the same run is ``unknown`` (the agent's
engine never guesses "no change" for it); one that is already as asked is
``in_sync``. A small text file's content change carries its diff (made by
the agent, which alone sees the content; never for a sensitive resource).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence

from protos import plumb_pb2 as pb

#: What a dry run says of a resource that a push would change.
CHANGES = pb.DRIFTED


@dataclasses.dataclass(frozen=True)
class ResourceSummary:
    """One resource across the nodes that answered."""

    resource_id: str
    changing: int  # nodes where a push would change it
    fields: dict[str, int]  # field -> on how many of those nodes it changes
    statuses: dict[str, int]  # status word -> how many nodes said it

    def line(self) -> str:
        """``file/app-conf content: 37 nodes, mode: 2 (unknown: 1)``."""
        fields = ", ".join(
            f"{field}: {count} node{'s' if count != 1 else ''}" if i == 0 else f"{field}: {count}"
            for i, (field, count) in enumerate(self.fields.items())
        )
        what = f"{self.resource_id} {fields}" if fields else f"{self.resource_id}"
        if not self.fields and self.changing:
            what += f": {self.changing} node{'s' if self.changing != 1 else ''}"
        rest = {k: v for k, v in self.statuses.items() if k not in ("drifted", "in_sync")}
        if rest:
            what += " (" + ", ".join(f"{k}: {v}" for k, v in rest.items()) + ")"
        return what


def summarize(answered: Iterable[pb.NodePlan]) -> list[ResourceSummary]:
    """Per resource that changes, or whose outcome is not known, on any node: the counts.

    Resources in sync everywhere are left out; most changed first, then by id.
    """
    changing: Counter[str] = Counter()
    fields: dict[str, Counter[str]] = {}
    statuses: dict[str, Counter[str]] = {}
    for plan in answered:
        for r in plan.report.results:
            statuses.setdefault(r.id, Counter())[status_word(r.status)] += 1
            if r.status == CHANGES:
                changing[r.id] += 1
                counted = fields.setdefault(r.id, Counter())
                for field in dict.fromkeys(c.field for c in r.changes):
                    counted[field] += 1
    shown = [rid for rid, seen in statuses.items() if set(seen) != {"in_sync"}]
    return sorted(
        (
            ResourceSummary(
                rid,
                changing[rid],
                dict(fields.get(rid, Counter()).most_common()),
                dict(sorted(statuses[rid].items())),
            )
            for rid in shown
        ),
        key=lambda s: (-s.changing, s.resource_id),
    )


def status_word(status: int) -> str:
    return str(pb.Status.Name(status)).lower() if status in pb.Status.values() else "unknown"


def changed_results(plan: pb.NodePlan) -> Sequence[pb.ResourceResult]:
    """A node's results worth showing: what would change, fail or is not known."""
    return [r for r in plan.report.results if r.status != pb.IN_SYNC]


def alike(answered: Iterable[pb.NodePlan]) -> list[tuple[list[str], Sequence[pb.ResourceResult]]]:
    """Nodes whose dry runs would change the same things the same way, grouped (in name
    order, the biggest group first): a thousand nodes alike are shown once."""
    groups: dict[tuple[bytes, ...], tuple[list[str], Sequence[pb.ResourceResult]]] = {}
    for plan in sorted(answered, key=lambda p: p.node_name):
        shown = changed_results(plan)
        if not shown:
            continue
        key = tuple(_comparable(r) for r in shown)
        groups.setdefault(key, ([], shown))[0].append(plan.node_name)
    return sorted(groups.values(), key=lambda g: (-len(g[0]), g[0][0]))


def _comparable(r: pb.ResourceResult) -> bytes:
    """What a result says, without what differs from node to node by nature (durations)."""
    same = pb.ResourceResult(id=r.id, status=r.status, error=r.error, changes=r.changes)
    return same.SerializeToString(deterministic=True)
