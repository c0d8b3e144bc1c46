"""What a plan shows, from the nodes' dry runs (server/plan.py): pure, over wire reports."""

from __future__ import annotations

from protos import plumb_pb2 as pb
from server.plan import alike, summarize

CONTENT = pb.Change(field="content", observed="sha256:a", desired="sha256:b", diff="-a\n+b\n")
MODE = pb.Change(field="mode", observed="0600", desired="0644")


def node(name: str, *results: pb.ResourceResult) -> pb.NodePlan:
    return pb.NodePlan(node_name=name, report=pb.Report(node_name=name, results=results))


def result(rid: str, status: int, *changes: pb.Change, took: float = 0.001) -> pb.ResourceResult:
    return pb.ResourceResult(id=rid, status=status, changes=changes, duration_s=took)


NODES = [
    node("web-2", result("file/conf", pb.DRIFTED, CONTENT, MODE), result("file/x", pb.IN_SYNC)),
    node("web-1", result("file/conf", pb.DRIFTED, CONTENT, took=0.5), result("file/x", pb.IN_SYNC)),
    node("web-3", result("file/conf", pb.DRIFTED, CONTENT), result("svc/app", pb.UNKNOWN)),
    node("db-1", result("file/x", pb.IN_SYNC)),
]


def test_the_summary_counts_nodes_per_resource_and_field_and_leaves_out_what_is_in_sync() -> None:
    summary = summarize(NODES)
    assert [(s.resource_id, s.changing, s.fields, s.statuses) for s in summary] == [
        ("file/conf", 3, {"content": 3, "mode": 1}, {"drifted": 3}),
        ("svc/app", 0, {}, {"unknown": 1}),
    ]
    assert summary[0].line() == "file/conf content: 3 nodes, mode: 1"
    assert summary[1].line() == "svc/app (unknown: 1)"


def test_nodes_alike_are_shown_once_whatever_their_durations() -> None:
    groups = [(names, [r.id for r in shown]) for names, shown in alike(NODES)]
    assert groups == [
        (["web-1"], ["file/conf"]),
        (["web-2"], ["file/conf"]),
        (["web-3"], ["file/conf", "svc/app"]),
    ]
    same = [node(f"n{i}", result("file/conf", pb.DRIFTED, CONTENT, took=i)) for i in range(5)]
    ((names, shown),) = alike(same)
    assert names == ["n0", "n1", "n2", "n3", "n4"] and shown[0].changes[0].diff == "-a\n+b\n"
