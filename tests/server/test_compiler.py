"""The catalog compiler: which resources a node gets, in what order, and when it refuses."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from modules import registry
from modules.base import Change, Context, Identity, Kind, Mode, Refreshable
from modules.catalog import Catalog, CatalogResource
from server import compiler
from server.compiler import DesiredState
from server.errors import CompileError, PlumbServerError
from server.manifest import Manifest, load
from server.targeting import Subject


def compile_catalog(
    manifests: Sequence[Manifest], node: str, labels: Mapping[str, str], revision: int
) -> Catalog:
    """The compiler's own, for manifests alone (nothing purged) and a node without facts."""
    return compiler.compile_catalog(DesiredState(tuple(manifests)), Subject(node, labels), revision)


def compile_fleet(
    manifests: Sequence[Manifest],
    nodes: Sequence[tuple[str, Mapping[str, str]]],
    revision: int,
) -> dict[str, Catalog]:
    return compiler.compile_fleet(
        DesiredState(tuple(manifests)), [Subject(n, labels) for n, labels in nodes], revision
    )


class AnySpec(Kind[Mapping[str, Any], None]):
    """A kind that accepts any spec: these tests are about compiling, not specs."""

    name = "testfile"

    def parse(self, raw: Mapping[str, Any]) -> Mapping[str, Any]:
        return raw

    def identities(self, spec: Mapping[str, Any]) -> tuple[Identity, ...]:
        return (Identity("path", str(spec["path"])),) if "path" in spec else ()

    def read(self, ctx: Context, spec: Mapping[str, Any]) -> None:
        return None

    def diff(self, spec: Mapping[str, Any], state: None) -> list[Change]:
        return []

    def apply(
        self, ctx: Context, spec: Mapping[str, Any], state: None, changes: list[Change]
    ) -> None:
        return None


class Refreshing(AnySpec, Refreshable[Mapping[str, Any]]):
    """A kind that may subscribe and be notified (a service)."""

    name = "testsvc"

    def refresh(
        self, ctx: Context, spec: Mapping[str, Any], applied: Sequence[Change]
    ) -> Change | None:
        return None


@pytest.fixture(autouse=True)
def test_kinds() -> Iterator[None]:
    registry.register(AnySpec())
    registry.register(Refreshing())
    try:
        yield
    finally:
        registry._registered.pop(AnySpec.name)
        registry._registered.pop(Refreshing.name)


BASE = """\
name: base
target: {all: true}
resources:
  - {kind: testfile, name: etc, spec: {path: /etc}}
  - kind: testfile
    name: motd
    spec: {path: /etc/motd}
    require: [testfile/etc]
    controls: [CIS-1.7.1]
"""

WEB = """\
name: web
target:
  labels: {role: web}
mode: audit
resources:
  - kind: testfile
    name: nginx-conf
    spec: {path: /etc/nginx.conf, lines: [a, b]}
    require: [testfile/etc]
  - {kind: testfile, name: index, spec: {path: /srv/index.html}}
"""

DB = """\
name: db
target:
  names: [db-1]
resources:
  - {kind: testfile, name: pg-conf, spec: {path: /etc/pg.conf}}
"""


def manifests(*files: tuple[str, str]) -> list[Manifest]:
    return [load(file, textwrap.dedent(text)) for file, text in files]


def standard() -> list[Manifest]:
    return manifests(("base.yaml", BASE), ("web.yaml", WEB), ("db.yaml", DB))


def ids(catalog: Catalog) -> list[str]:
    return [r.id for r in catalog.resources]


@pytest.mark.parametrize(
    ("node", "labels", "expected"),
    [
        (
            "web-1",
            {"role": "web", "env": "prod"},
            ["testfile/etc", "testfile/motd", "testfile/nginx-conf", "testfile/index"],
        ),
        ("db-1", {"role": "db"}, ["testfile/etc", "testfile/motd", "testfile/pg-conf"]),
        ("misc", {}, ["testfile/etc", "testfile/motd"]),
        ("web-2", {"role": "webserver"}, ["testfile/etc", "testfile/motd"]),
    ],
)
def test_node_gets_matching_manifests_in_manifest_then_declaration_order(
    node: str, labels: dict[str, str], expected: list[str]
) -> None:
    assert ids(compile_catalog(standard(), node, labels, revision=3)) == expected


def test_order_follows_the_manifest_sequence() -> None:
    base, web, _ = standard()
    catalog = compile_catalog([web, base], "web-1", {"role": "web"}, revision=1)
    assert [r.manifest for r in catalog.resources] == ["web", "web", "base", "base"]


def test_no_matching_manifest_gives_an_empty_catalog() -> None:
    (db,) = manifests(("db.yaml", DB))
    assert compile_catalog([db], "web-1", {"role": "web"}, 7) == Catalog("web-1", 7, ())


def test_resources_carry_manifest_mode_spec_require_and_controls() -> None:
    catalog = compile_catalog(standard(), "web-1", {"role": "web"}, revision=5)
    assert catalog.node == "web-1"
    assert catalog.revision == 5
    assert catalog.resources[1] == CatalogResource(
        kind="testfile",
        name="motd",
        spec={"path": "/etc/motd"},
        manifest="base",
        mode=Mode.ENFORCE,
        require=("testfile/etc",),
        controls=("CIS-1.7.1",),
    )
    nginx = catalog.resources[2]
    assert (nginx.manifest, nginx.mode) == ("web", Mode.AUDIT)
    assert nginx.spec == {"path": "/etc/nginx.conf", "lines": ["a", "b"]}


def test_catalog_specs_are_copies() -> None:
    loaded = standard()
    first = compile_catalog(loaded, "web-1", {"role": "web"}, revision=1)
    first.resources[2].spec["lines"].append("c")
    second = compile_catalog(loaded, "web-2", {"role": "web"}, revision=1)
    assert second.resources[2].spec["lines"] == ["a", "b"]


def test_to_json_round_trips_and_is_stable() -> None:
    loaded = standard()
    catalog = compile_catalog(loaded, "web-1", {"role": "web"}, revision=9)
    assert Catalog.from_json(catalog.to_json()) == catalog
    assert compile_catalog(loaded, "web-1", {"role": "web"}, revision=9).to_json() == (
        catalog.to_json()
    )


# -- refusals ----------------------------------------------------------------------

MOTD_AGAIN = """\
name: web
target:
  labels: {role: web}
resources:
  - {kind: testfile, name: index, spec: {path: /srv/index.html}}
  - kind: testfile
    name: motd
    spec: {path: /etc/motd, content: web}
"""

NEEDS_PG = """\
name: app
target:
  labels: {role: app}
resources:
  - kind: testfile
    name: app-conf
    spec: {path: /etc/app.conf}
    require:
      - testfile/etc
      - testfile/pg-conf
"""


def messages(error: CompileError) -> tuple[str, ...]:
    return tuple(problem.message for problem in error.problems)


def test_two_manifests_targeting_a_node_declare_the_same_resource() -> None:
    loaded = manifests(("base.yaml", BASE), ("web.yaml", MOTD_AGAIN))
    with pytest.raises(CompileError) as info:
        compile_catalog(loaded, "node-a", {"role": "web"}, revision=1)
    assert isinstance(info.value, PlumbServerError)
    assert info.value.node == "node-a"
    assert messages(info.value) == (
        "testfile/motd is declared by base.yaml:5 and web.yaml:6, both targeting node node-a",
    )


def test_the_same_resource_in_manifests_for_different_nodes_is_fine() -> None:
    loaded = manifests(("base.yaml", BASE), ("web.yaml", MOTD_AGAIN))
    no_base = [m for m in loaded if m.name == "web"]
    assert ids(compile_catalog(no_base, "node-a", {"role": "web"}, 1)) == [
        "testfile/index",
        "testfile/motd",
    ]
    assert ids(compile_catalog(loaded, "node-b", {"role": "db"}, 1)) == [
        "testfile/etc",
        "testfile/motd",
    ]


def test_require_of_a_resource_declared_only_for_other_nodes() -> None:
    loaded = manifests(("base.yaml", BASE), ("db.yaml", DB), ("app.yaml", NEEDS_PG))
    with pytest.raises(CompileError) as info:
        compile_catalog(loaded, "app-1", {"role": "app"}, revision=1)
    assert messages(info.value) == (
        "testfile/app-conf (app.yaml:10) requires testfile/pg-conf, declared only by"
        " db.yaml:5, whose target does not include node app-1",
    )
    # Placed at the require entry itself, so the CLI prints file:line first.
    assert str(info.value).startswith("app.yaml:10: resources[0].require[1]: ")


def test_require_of_a_resource_no_manifest_declares() -> None:
    loaded = manifests(("app.yaml", NEEDS_PG))
    with pytest.raises(CompileError) as info:
        compile_catalog(loaded, "app-1", {"role": "app"}, revision=1)
    assert messages(info.value) == (
        "testfile/app-conf (app.yaml:9) requires testfile/etc, which no manifest declares",
        "testfile/app-conf (app.yaml:10) requires testfile/pg-conf, which no manifest declares",
    )


def test_compile_fleet_reports_every_group_of_nodes_in_order() -> None:
    loaded = manifests(
        ("base.yaml", BASE), ("web.yaml", MOTD_AGAIN), ("db.yaml", DB), ("app.yaml", NEEDS_PG)
    )
    nodes = [
        ("db-1", {"role": "db"}),
        ("web-1", {"role": "web"}),
        ("app-1", {"role": "app"}),
        ("web-2", {"role": "web"}),
    ]
    with pytest.raises(CompileError) as excinfo:
        compile_fleet(loaded, nodes, revision=1)
    problems = messages(excinfo.value)
    # web-1 and web-2 select the same manifests: one compilation, one message naming both.
    assert [p.split("node ", 1)[-1] for p in problems] == ["web-1 (and 1 more)", "app-1"]
    assert problems[0].startswith("testfile/motd is declared by base.yaml:5 and web.yaml:6")
    assert "requires testfile/pg-conf" in problems[1]


def test_compile_fleet_compiles_every_node() -> None:
    nodes = [("db-1", {}), ("web-1", {"role": "web"}), ("web-2", {"role": "web"})]
    catalogs = compile_fleet(standard(), nodes, revision=4)
    assert sorted(catalogs) == ["db-1", "web-1", "web-2"]
    assert catalogs["web-2"] == compile_catalog(standard(), "web-2", {"role": "web"}, 4)
    assert catalogs["web-1"].resources == catalogs["web-2"].resources
    assert compile_fleet(standard(), [], revision=4) == {}


# -- notify / subscribe ------------------------------------------------------------

SERVICES = """\
name: services
target: {all: true}
resources:
  - kind: testsvc
    name: web
    subscribe: [testfile/motd, testfile/etc]
  - {kind: testsvc, name: db}
"""

CONFIGS = """\
name: configs
target: {all: true}
resources:
  - {kind: testfile, name: tls, spec: {path: /etc/tls}, notify: [testsvc/web, testsvc/db]}
  - kind: testfile
    name: etc-again
    spec: {path: /etc/x}
    notify: [testsvc/web]
  - {kind: testfile, name: again, spec: {path: /etc/y}, notify: [testsvc/web, testsvc/web]}
"""


def test_notify_is_merged_into_the_receivers_subscribe() -> None:
    loaded = manifests(("base.yaml", BASE), ("services.yaml", SERVICES), ("configs.yaml", CONFIGS))
    catalog = compile_catalog(loaded, "web-1", {}, revision=2)
    by_id = {r.id: r for r in catalog.resources}
    # Its own subscribe entries first, then each notifier in catalog order, once each.
    assert by_id["testsvc/web"].subscribe == (
        "testfile/motd",
        "testfile/etc",
        "testfile/tls",
        "testfile/etc-again",
        "testfile/again",
    )
    assert by_id["testsvc/db"].subscribe == ("testfile/tls",)
    # The notifiers carry nothing: the relation lives at the receiving end only.
    assert {r.id for r in catalog.resources if r.subscribe} == {"testsvc/web", "testsvc/db"}
    assert by_id["testsvc/web"].require == ()
    assert "notify" not in by_id["testfile/tls"].to_dict()
    assert Catalog.from_json(catalog.to_json()) == catalog


def test_notify_and_subscribe_across_nodes_are_refused_like_require() -> None:
    notifier = """\
    name: app
    target: {labels: {role: app}}
    resources:
      - kind: testfile
        name: app-conf
        spec: {path: /etc/app.conf}
        notify: [testsvc/db]
      - {kind: testsvc, name: app, subscribe: [testfile/pg-conf]}
    """
    db = DB + "  - {kind: testsvc, name: db}\n"
    loaded = manifests(("db.yaml", db), ("app.yaml", notifier))
    with pytest.raises(CompileError) as info:
        compile_catalog(loaded, "app-1", {"role": "app"}, revision=1)
    assert messages(info.value) == (
        "testfile/app-conf (app.yaml:7) notifies testsvc/db, declared only by db.yaml:6,"
        " whose target does not include node app-1",
        "testsvc/app (app.yaml:8) subscribes to testfile/pg-conf, declared only by db.yaml:5,"
        " whose target does not include node app-1",
    )


def test_catalog_json_names_the_relation_subscribe_and_defaults_it_when_absent() -> None:
    web = CatalogResource("testsvc", "web", {}, subscribe=("testfile/conf",))
    assert web.to_dict()["subscribe"] == ["testfile/conf"]
    older = {k: v for k, v in web.to_dict().items() if k != "subscribe"}
    assert CatalogResource.from_dict(older) == CatalogResource("testsvc", "web", {})
    assert CatalogResource.from_dict(web.to_dict()) == web


def test_a_resources_timeout_is_carried_and_absent_from_the_json_when_not_set() -> None:
    (app,) = manifests(
        (
            "app.yaml",
            """\
            name: app
            target: {all: true}
            resources:
              - {kind: testfile, name: slow, spec: {path: /slow}, timeout: 900}
              - {kind: testfile, name: usual, spec: {path: /usual}}
            """,
        )
    )
    catalog = compile_catalog([app], "web-1", {}, revision=1)
    slow, usual = catalog.resources
    assert (slow.timeout_s, usual.timeout_s) == (900, None)
    assert slow.to_dict()["timeout"] == 900
    assert b'"timeout":900}' in catalog.to_json()  # as written: 900, not 900.0
    # A catalog without timeouts is byte for byte what it was before the field.
    assert "timeout" not in usual.to_dict()
    assert Catalog.from_json(catalog.to_json()) == catalog
    with pytest.raises(ValueError, match="timeout: expected a positive number of seconds"):
        CatalogResource.from_dict({**slow.to_dict(), "timeout": -1})


MODES = """\
name: modes
target: {all: true}
mode: MODE
resources:
  - {kind: testfile, name: says-nothing, spec: {path: /nothing}}
  - {kind: testfile, name: says-enforce, spec: {path: /enforce}, mode: enforce}
  - {kind: testfile, name: says-audit, spec: {path: /audit}, mode: audit}
"""


@pytest.mark.parametrize(
    ("manifest_mode", "expected"),
    [
        # Audit wins when the two disagree, whichever of them says it.
        ("enforce", [Mode.ENFORCE, Mode.ENFORCE, Mode.AUDIT]),
        ("audit", [Mode.AUDIT, Mode.AUDIT, Mode.AUDIT]),
    ],
)
def test_a_resource_is_enforced_only_if_neither_it_nor_its_manifest_says_audit(
    manifest_mode: str, expected: list[Mode]
) -> None:
    (m,) = manifests(("modes.yaml", MODES.replace("MODE", manifest_mode)))
    catalog = compile_catalog([m], "web-1", {}, revision=1)
    assert [r.mode for r in catalog.resources] == expected
    # The agent sees it in the signed catalog, as the mode it runs the resource in.
    sent = Catalog.from_json(catalog.to_json())
    assert [r.mode for r in sent.resources] == expected
    assert [r.to_dict()["mode"] for r in catalog.resources] == [str(m) for m in expected]


def test_the_removal_of_a_purged_audit_resource_stays_in_audit() -> None:
    text = textwrap.dedent(
        """\
        name: old
        target: {all: true}
        resources:
          - {kind: file, name: kept, spec: {path: /etc/kept, content: "x"}, mode: audit}
          - {kind: file, name: gone, spec: {path: /etc/gone, content: "y"}}
        """
    )
    purged = load("old.yaml", text)
    state = DesiredState((), (purged,))
    catalog = compiler.compile_catalog(state, Subject("web-1", {}), 2)
    modes = {r.name: (r.mode, r.spec.get("state")) for r in catalog.resources}
    assert modes == {"kept": (Mode.AUDIT, "absent"), "gone": (Mode.ENFORCE, "absent")}
