"""believed(): a report keeps only what its node was given, with the catalog's own words."""

from __future__ import annotations

from modules.catalog import Catalog, CatalogResource
from protos import plumb_pb2 as pb
from server.given import Given, believed

GIVEN = Given.of(
    Catalog(
        node="web-1",
        revision=3,
        resources=(
            CatalogResource("file", "motd", {"path": "/etc/motd"}, "base", controls=("CIS-1",)),
            CatalogResource("file", "issue", {"path": "/etc/issue"}, "base"),
        ),
    ).to_json()
)


def result(rid: str, manifest: str = "base", controls: tuple[str, ...] = ()) -> pb.ResourceResult:
    return pb.ResourceResult(id=rid, manifest=manifest, controls=controls, status=pb.IN_SYNC)


def test_an_honest_report_is_the_same_message() -> None:
    report = pb.Report(id="r", results=[result("file/motd", controls=("CIS-1",))])
    assert believed(report, GIVEN) == (report, [])
    assert believed(report, GIVEN)[0] is report  # nothing copied


def test_invented_resources_go_and_manifests_and_controls_are_the_catalogs() -> None:
    report = pb.Report(
        id="r",
        results=[
            result("file/motd", "made-up", ("FAKE",)),
            result("file/evil"),
            result("file/issue", controls=("FAKE",)),
        ],
    )
    checked, dropped = believed(report, GIVEN)
    assert dropped == ["file/evil"]
    assert [(r.id, r.manifest, list(r.controls)) for r in checked.results] == [
        ("file/motd", "base", ["CIS-1"]),
        ("file/issue", "base", []),
    ]
    assert len(report.results) == 3  # the message received is left as it was
