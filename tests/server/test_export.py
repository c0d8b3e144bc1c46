"""Evidence exports (server/export.py): pure, over what the Admin service answers."""

from __future__ import annotations

from protos import plumb_pb2 as pb
from server.export import Evidence, to_csv, to_html, to_junit


def row(scope: str, name: str, **counts: int) -> pb.ComplianceRow:
    good = counts.get("in_sync", 0) + counts.get("repaired", 0)
    expected = sum(counts.values())
    percent = 100 * good / expected if expected else -1
    r = pb.ComplianceRow(
        scope=scope,
        name=name,
        compliant=good,
        expected=expected,
        percent=percent,
        percent_with_waivers=percent,
    )
    r.counts.update(counts)
    return r


EVIDENCE = Evidence(
    pb.GetComplianceResponse(
        revision=7,
        rows=[
            row("node", "web-1", in_sync=2),
            row("node", "web-2", in_sync=1, failed=1),
            row("control", "CIS-<1>", failed=1, in_sync=1),
        ],
        fleet=row("fleet", "fleet", in_sync=3, failed=1),
    ),
    [pb.DriftEvent(node_name="web-2", resource_id="file/x", status=pb.FAILED, detected_at=1.0)],
    "plumb compliance --format html --target 'role=<web>'",
    1764620000.0,
)


def test_the_page_escapes_what_it_shows_and_fetches_nothing() -> None:
    page = to_html(EVIDENCE)
    assert "role=&lt;web&gt;" in page and "CIS-&lt;1&gt;" in page and "<web>" not in page
    assert "src=" not in page and "<link" not in page and "<script" not in page
    # The worst node first.
    assert page.index("<td>web-2</td>") < page.index("<td>web-1</td>")


def test_csv_and_junit_carry_every_state_and_what_produced_them() -> None:
    lines = to_csv(EVIDENCE).splitlines()
    assert lines[1] == "# query: plumb compliance --format html --target 'role=<web>'"
    assert lines[2] == "scope,name,compliant,expected,percent,percent_with_waivers,failed,in_sync"
    assert lines[-1] == "fleet,fleet,3,4,75.00,75.00,1,3"
    junit = to_junit(EVIDENCE)
    assert 'name="control CIS-&lt;1&gt;" tests="2" failures="1"' in junit
    assert junit.startswith("<?xml")
