"""believed(): a report keeps only what its node was given, with the catalog's own words."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modules.catalog import Catalog, CatalogResource
from protos import plumb_pb2 as pb
from server.given import Given, GivenCatalogs, believed
from server.store import Store

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


def test_what_a_push_remembers_is_served_without_the_store_and_the_oldest_goes(
    tmp_path: Path,
) -> None:
    store = Store.create(f"sqlite:///{tmp_path / 'plumb.db'}")  # holds no catalog at all
    try:
        given = GivenCatalogs(store, size=2)
        given.remember({("web-1", 3): GIVEN, ("web-2", 3): GIVEN})
        assert asyncio.run(given.of("web-1", 3)) is GIVEN
        given.remember({("web-3", 3): GIVEN})  # web-2 was the oldest, now beyond the size
        assert asyncio.run(given.of("web-3", 3)) is GIVEN
        assert asyncio.run(given.of("web-2", 3)) is None  # the store's answer: never given
    finally:
        store.close()
