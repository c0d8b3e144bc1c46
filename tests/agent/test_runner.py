"""The run report: every engine result goes on the wire as it is."""

from __future__ import annotations

from agent import engine
from agent.report import MAX_ERROR_CHARS, MAX_VALUE_CHARS, RunReport, Trigger
from modules.base import Change, Status
from protos import plumb_pb2 as pb
from protos.limits import MAX_REPORT_BYTES


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


def _results(n: int, value: str, error: str = "") -> tuple[engine.ResourceResult, ...]:
    return tuple(
        engine.ResourceResult(
            id=f"file/f{i}",
            kind="file",
            name=f"f{i}",
            manifest="m",
            status=Status.FAILED if error else Status.REPAIRED,
            changes=(Change("content", value, value),),
            error=error,
            observed={"big": value},
        )
        for i in range(n)
    )


def _report(results: tuple[engine.ResourceResult, ...]) -> RunReport:
    return RunReport("r", "n", 1, False, Trigger.PUSH, 1.0, 2.0, results)


def test_long_values_are_cut_with_a_marker() -> None:
    wire = _report(_results(1, "v" * 10_000, error="e" * 20_000)).to_wire()
    [result] = wire.results
    assert wire.truncated
    assert result.changes[0].observed == "v" * MAX_VALUE_CHARS + "… (5904 more characters cut)"
    assert result.observed["big"].endswith("(5904 more characters cut)")
    assert result.error == "e" * MAX_ERROR_CHARS + "… (3616 more characters cut)"
    assert not _report(_results(1, "short")).to_wire().truncated


def test_a_report_over_its_bound_keeps_every_status_and_fits() -> None:
    results = _results(3000, "v" * 4000)  # 3000 x 12 KB of values: 36 MB as it was
    wire = _report(results).to_wire()
    assert wire.ByteSize() <= MAX_REPORT_BYTES
    assert wire.truncated
    assert [(r.id, r.status) for r in wire.results] == [(r.id, pb.REPAIRED) for r in results]
