"""The runner's report: every engine result goes on the wire as it is."""

from __future__ import annotations

from agent import engine
from agent.runner import _report
from modules.base import Change, Status
from protos import plumb_pb2 as pb


def test_a_result_goes_on_the_wire_with_everything_it_says() -> None:
    result = engine.ResourceResult(
        id="service/web",
        kind="service",
        name="web",
        manifest="web",
        status=Status.REPAIRED,
        changes=(Change("state", "inactive (dead)", "running"),),
        duration_s=0.5,
        controls=("CIS-2.1",),
        observed={"main_pid": "812", "uptime": "3 s"},
    )

    report = _report("web-1", 4, False, pb.MANUAL, 100.0, [result], {"service/web"})

    [sent] = pb.Report.FromString(report.SerializeToString()).results
    assert (sent.id, sent.kind, sent.name, sent.manifest) == (
        "service/web",
        "service",
        "web",
        "web",
    )
    assert (sent.status, sent.duration_s, sent.drift) == (pb.REPAIRED, 0.5, True)
    assert [(c.field, c.observed, c.desired) for c in sent.changes] == [
        ("state", "inactive (dead)", "running")
    ]
    assert list(sent.controls) == ["CIS-2.1"]
    assert dict(sent.observed) == {"main_pid": "812", "uptime": "3 s"}
    assert (report.node_name, report.revision, report.trigger) == ("web-1", 4, pb.MANUAL)
