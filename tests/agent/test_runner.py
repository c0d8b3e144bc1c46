"""The run report: every engine result goes on the wire as it is."""

from __future__ import annotations

from agent import engine
from agent.report import RunReport, Trigger
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
    report = RunReport(
        "r1", "web-1", 4, False, Trigger.MANUAL, 100.0, 101.0, (result,), frozenset({"service/web"})
    )

    wire = pb.Report.FromString(report.to_wire().SerializeToString())
    [sent] = wire.results
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
    assert (wire.id, wire.node_name, wire.revision, wire.trigger) == ("r1", "web-1", 4, pb.MANUAL)
    assert (wire.started_at, wire.finished_at, wire.noop) == (100.0, 101.0, False)


def test_every_trigger_and_status_has_a_wire_name() -> None:
    for trigger in Trigger:
        assert pb.Trigger.Name(pb.Trigger.Value(trigger.name)).lower() == trigger.value
    for status in Status:
        assert pb.Status.Name(pb.Status.Value(status.name)).lower() == status.value
