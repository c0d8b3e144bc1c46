"""Manifest loading: every bad manifest yields file, line, field and what was expected."""

from __future__ import annotations

import dataclasses
import itertools
import re
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from modules import registry
from modules.base import Change, Context, Identity, Kind, Mode, Refreshable
from modules.errors import SpecError
from server.errors import ManifestError, ManifestInvalid
from server.manifest import Manifest, ResourceDecl, Target, load, load_all, validate_set
from server.targeting import Subject


class FakeFile(Kind[dict[str, Any], None]):
    """Stands in for a real kind, with the spec errors the loader has to place.

    ``path`` is required, ``mode`` must be a quoted octal string, ``rules``
    items need an integer ``port`` (nested fields) and ``sysctl`` keys contain
    dots, as real kinds' specs do.
    """

    name = "testfile"

    def parse(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        if raw.get("broken"):
            raise SpecError("", "this spec is broken as a whole")
        path = raw.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise SpecError("path", "expected an absolute path")
        mode = raw.get("mode", "0644")
        if not isinstance(mode, str) or not re.fullmatch(r"0[0-7]{3}", mode):
            raise SpecError("mode", "expected a quoted octal string like '0644'")
        for index, rule in enumerate(raw.get("rules", [])):
            if not isinstance(rule.get("port"), int):
                raise SpecError(f"rules.{index}.port", "expected a port number")
        for key, value in raw.get("sysctl", {}).items():
            if not isinstance(value, int):
                raise SpecError(f"sysctl.{key}", "expected an integer")
        return dict(raw)

    def identities(self, spec: dict[str, Any]) -> tuple[Identity, ...]:
        return (Identity("path", spec["path"]),)

    def read(self, ctx: Context, spec: dict[str, Any]) -> None:
        return None

    def diff(self, spec: dict[str, Any], state: None) -> list[Change]:
        return []

    def apply(self, ctx: Context, spec: dict[str, Any], state: None, changes: list[Change]) -> None:
        return None


class FakeService(FakeFile, Refreshable[dict[str, Any]]):
    """A kind that can be refreshed, so it may subscribe and be notified; any spec."""

    name = "testsvc"

    def refresh(
        self, ctx: Context, spec: dict[str, Any], applied: Sequence[Change]
    ) -> Change | None:
        return None

    def parse(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        return dict(raw)

    def identities(self, spec: dict[str, Any]) -> tuple[Identity, ...]:
        return (Identity("unit", str(spec.get("unit", ""))),) if "unit" in spec else ()


@pytest.fixture(autouse=True)
def test_kinds() -> Iterator[None]:
    registry.register(FakeFile())
    registry.register(FakeService())
    try:
        yield
    finally:
        registry._registered.pop(FakeFile.name)
        registry._registered.pop(FakeService.name)


def dedent(text: str) -> str:
    return textwrap.dedent(text)


def manifest_text(name: str, target: str, *resources: str) -> str:
    """A manifest with one flow-style resource per line, the first at line 4."""
    items = "".join(f"  - {resource}\n" for resource in resources)
    return f"name: {name}\ntarget: {target}\nresources:\n{items}"


# -- bad manifests: one runner over a table ------------------------------------


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    files: dict[str, str]
    # (file, line, field, a fragment of the message), in the order reported
    expected: list[tuple[str, int, str, str]]


def bad(case_id: str, text: str, *expected: tuple[int, str, str]) -> Bad:
    """A case with a single file, web.yaml."""
    return Bad(case_id, {"web.yaml": text}, [("web.yaml", *e) for e in expected])


HEAD = "name: web\ntarget: {all: true}\n"  # lines 1-2 of most cases

# Each level lists the one below ten times: six short lines, a million values.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{level}: &{level} [{', '.join([f'*{below}'] * 10)}]\n"
    for below, level in itertools.pairwise("abcdef")
)

BAD = [
    bad(
        "yaml-syntax-unclosed-flow",
        """\
        name: web
        target:
          labels: {role: web
        resources: []
        """,
        (4, "", "invalid YAML: expected ',' or '}', but got"),
    ),
    bad(
        "yaml-syntax-tab",
        "name: web\ntarget: {all: true}\nresources:\n\t- kind: testfile\n",
        (4, "", "invalid YAML: found character '\\t'"),
    ),
    bad(
        "yaml-syntax-mapping-in-scalar",
        "name: web\ntarget: all: true\n",
        (2, "", "invalid YAML: mapping values are not allowed here"),
    ),
    bad("empty-file", "", (1, "", "the file is empty")),
    bad("only-comments", "# nothing yet\n\n", (1, "", "the file is empty")),
    bad(
        "two-documents",
        HEAD + "resources: []\n---\nname: db\n",
        (5, "", "found a second YAML document; put one manifest per file"),
    ),
    bad("document-is-a-list", "- name: web\n", (1, "", "expected a mapping with name, target")),
    bad("document-is-a-string", "web\n", (1, "", "got a string ('web')")),
    bad(
        "missing-everything-after-comment",
        "# header\nmode: audit\n",
        (2, "name", "missing required field"),
        (2, "target", "missing required field"),
        (2, "resources", "missing required field"),
    ),
    bad(
        "unknown-top-level-key",
        HEAD + "resources: []\ntagets: {}\n",
        (4, "tagets", "unknown field (did you mean 'target'? expected one of: name, target"),
    ),
    bad(
        "name-is-a-list",
        "name: [1]\ntarget: {all: true}\nresources: []\n",
        (1, "name", "expected a string, got a list"),
    ),
    bad(
        "name-has-capitals",
        "name: Web\ntarget: {all: true}\nresources: []\n",
        (1, "name", "expected a name like 'web'"),
    ),
    bad(
        "name-too-long",
        f"name: {'a' * 64}\ntarget: {{all: true}}\nresources: []\n",
        (1, "name", "at most 63 characters"),
    ),
    bad(
        "mode-unknown",
        HEAD + "mode: enforcing\nresources: []\n",
        (3, "mode", "expected enforce or audit, got a string ('enforcing')"),
    ),
    bad(
        "mode-boolean",
        HEAD + "mode: yes\nresources: []\n",
        (3, "mode", "got a boolean (True)"),
    ),
    bad(
        "target-empty",
        "name: web\ntarget: {}\nresources: []\n",
        (2, "target", "expected at least one of labels, names, match or all: true"),
    ),
    bad(
        "target-not-a-mapping",
        "name: web\ntarget: [role=web]\nresources: []\n",
        (
            2,
            "target",
            "expected a selector or a mapping with labels, names, match or all, got a list",
        ),
    ),
    bad(
        "target-labels-wrong-types",
        """\
        name: web
        target:
          labels:
            role: web
            rack: 12
          names: node-a
          nodes: [node-b]
        resources: []
        """,
        (5, "target.labels.rack", "expected a string (quote numbers and booleans), got an integer"),
        (6, "target.names", "expected a list of strings, got a string ('node-a')"),
        (7, "target.nodes", "unknown field (did you mean 'names'?"),
    ),
    bad(
        "target-labels-empty",
        "name: web\ntarget:\n  labels: {}\nresources: []\n",
        (3, "target.labels", "expected at least one label"),
    ),
    bad(
        "target-all-and-labels",
        "name: web\ntarget:\n  labels: {role: web}\n  all: true\nresources: []\n",
        (4, "target.all", "all: true cannot be combined with labels, names or match"),
    ),
    bad(
        "target-all-false",
        "name: web\ntarget:\n  all: false\nresources: []\n",
        (3, "target.all", "all: false alone targets no node"),
    ),
    bad(
        "resources-null",
        HEAD + "resources:\n",
        (3, "resources", "expected a list of resources ([] for none), got null"),
    ),
    bad(
        "resource-not-a-mapping",
        HEAD + "resources:\n  - testfile/motd\n",
        (4, "resources[0]", "expected a mapping with kind, name and spec, got a string"),
    ),
    bad(
        "resource-missing-kind-and-name",
        HEAD + "resources:\n  - spec: {path: /etc/motd}\n",
        (4, "resources[0].kind", "missing required field"),
        (4, "resources[0].name", "missing required field"),
    ),
    bad(
        "resource-unknown-key",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: motd
            spec: {path: /etc/motd}
            requires: [testfile/etc]
        """,
        (7, "resources[0].requires", "did you mean 'require'?"),
    ),
    bad(
        "unknown-kind",
        HEAD + "resources:\n  - kind: nosuchkind\n    name: x\n    spec: {}\n",
        (4, "resources[0].kind", "unknown kind 'nosuchkind' (known kinds: "),
    ),
    bad(
        "require-is-a-string",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: motd
            spec: {path: /etc/motd}
            require: testfile/x
        """,
        (7, "resources[0].require", "expected a list of strings, got a string ('testfile/x')"),
    ),
    bad(
        "require-entries-malformed",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: motd
            spec: {path: /etc/motd}
            require:
              - motd
              - {kind: testfile}
        """,
        (8, "resources[0].require[0]", "expected a resource id like 'file/motd' (kind/name)"),
        (9, "resources[0].require[1]", "expected a string, got a mapping"),
    ),
    bad(
        "controls-wrong-types",
        HEAD + "resources:\n  - kind: testfile\n    name: a\n    spec: {path: /a}\n"
        "    controls: [CIS-1, 2, '']\n",
        (7, "resources[0].controls[1]", "expected a string, got an integer (2)"),
        (7, "resources[0].controls[2]", "expected a non-empty string"),
    ),
    bad(
        "timeout-not-a-number",
        HEAD + "resources:\n  - kind: testfile\n    name: a\n    spec: {path: /a}\n"
        "    timeout: 2m\n",
        (7, "resources[0].timeout", "expected a number of seconds, more than 0 and at most"),
    ),
    bad(
        "timeout-out-of-range",
        HEAD + "resources:\n"
        "  - {kind: testfile, name: a, spec: {path: /a}, timeout: 0}\n"
        "  - {kind: testfile, name: b, spec: {path: /b}, timeout: -5}\n"
        "  - {kind: testfile, name: c, spec: {path: /c}, timeout: 100000}\n"
        "  - {kind: testfile, name: d, spec: {path: /d}, timeout: true}\n"
        "  - {kind: testfile, name: e, spec: {path: /e}, timeout: .nan}\n"
        "  - {kind: testfile, name: f, spec: {path: /f}, timeout: null}\n",
        (4, "resources[0].timeout", "at most 86400, got an integer (0)"),
        (5, "resources[1].timeout", "got an integer (-5)"),
        (6, "resources[2].timeout", "got an integer (100000)"),
        (7, "resources[3].timeout", "got a boolean (True)"),
        (8, "resources[4].timeout", "got a number (nan)"),
        (9, "resources[5].timeout", "got null"),
    ),
    bad(
        "sensitive-not-a-boolean",
        HEAD + "resources:\n  - kind: testfile\n    name: a\n    spec: {path: /a}\n"
        "    sensitive: yes please\n",
        (7, "resources[0].sensitive", "expected true or false, got a string ('yes please')"),
    ),
    bad(
        "resource-mode-unknown",
        HEAD + "resources:\n  - kind: testfile\n    name: a\n    spec: {path: /a}\n"
        "    mode: dry-run\n",
        (7, "resources[0].mode", "expected enforce or audit, got a string ('dry-run')"),
    ),
    bad(
        "resource-mode-wrong-types",
        HEAD + "resources:\n"
        "  - {kind: testfile, name: a, spec: {path: /a}, mode: true}\n"
        "  - {kind: testfile, name: b, spec: {path: /b}, mode: null}\n"
        "  - {kind: testfile, name: c, spec: {path: /c}, mode: [audit]}\n",
        (4, "resources[0].mode", "expected enforce or audit, got a boolean (True)"),
        (5, "resources[1].mode", "expected enforce or audit, got null"),
        (6, "resources[2].mode", "expected enforce or audit, got a list"),
    ),
    bad(
        "resource-mode-is-a-files-permissions",
        HEAD + "resources:\n  - kind: testfile\n    name: a\n    spec: {path: /a}\n"
        "    mode: '0644'\n",
        (7, "resources[0].mode", "got a string ('0644'); permissions such as '0644' go in"),
    ),
    bad(
        "resource-mode-bad-beside-manifest-mode-bad",
        HEAD + "mode: Audit\nresources:\n  - {kind: testfile, name: a, spec: {path: /a}, "
        "mode: AUDIT}\n",
        (3, "mode", "expected enforce or audit, got a string ('Audit')"),
        (5, "resources[0].mode", "expected enforce or audit, got a string ('AUDIT')"),
    ),
    bad(
        "spec-not-a-mapping",
        HEAD + "resources:\n  - kind: testfile\n    name: a\n    spec: [path, /a]\n",
        (6, "resources[0].spec", "expected a mapping, got a list"),
    ),
    bad(
        "spec-error-on-a-field",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: motd
            spec:
              path: /etc/motd
              mode: 0644
        """,
        (8, "resources[0].spec.mode", "expected a quoted octal string like '0644'"),
    ),
    bad(
        "spec-error-on-a-nested-list-item",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: fw
            spec:
              path: /etc/fw
              rules:
                - port: 22
                - proto: tcp
                  port: ssh
        """,
        (11, "resources[0].spec.rules[1].port", "expected a port number"),
    ),
    bad(
        "spec-error-on-a-key-with-dots",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: sysctl
            spec:
              path: /etc/sysctl.conf
              sysctl:
                net.ipv4.ip_forward: "1"
        """,
        (9, "resources[0].spec.sysctl.net.ipv4.ip_forward", "expected an integer"),
    ),
    bad(
        "spec-error-on-a-missing-field-points-at-spec",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: motd
            spec:
              content: hi
        """,
        (6, "resources[0].spec.path", "expected an absolute path"),
    ),
    bad(
        "spec-missing-points-at-the-resource",
        HEAD + "resources:\n  - kind: testfile\n    name: motd\n",
        (4, "resources[0].spec.path", "expected an absolute path"),
    ),
    bad(
        "spec-error-without-a-field",
        HEAD + "resources:\n  - kind: testfile\n    name: a\n    spec: {path: /a, broken: true}\n",
        (6, "resources[0].spec", "this spec is broken as a whole"),
    ),
    bad(
        "duplicate-resource",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: motd
            spec: {path: /etc/motd}
          - kind: testfile
            name: issue
            spec: {path: /etc/issue}
          - kind: testfile
            name: motd
            spec: {path: /etc/motd2}
        """,
        (11, "resources[2].name", "testfile/motd is already declared at line 5"),
    ),
    bad(
        "duplicate-yaml-key",
        "name: web\ntarget: {all: true}\nname: db\nresources: []\n",
        (3, "name", "duplicate key (first at line 1)"),
    ),
    bad(
        "recursive-alias",
        "name: web\ntarget: {all: true}\nresources: &r [*r]\n",
        (3, "resources[0]", "an alias refers to a value that contains it"),
        (3, "resources[0]", "expected a mapping with kind, name and spec, got null"),
    ),
    bad(
        "alias-bomb",
        ALIAS_BOMB,
        (1, "", "the document expands to more than 100000 values"),
    ),
    bad(
        "unsupported-tag",
        HEAD + "resources: !!set {a: null}\n",
        (3, "resources", "unsupported tag"),
        (3, "resources", "expected a list of resources"),
    ),
    bad(
        "every-error-in-a-file-is-reported",
        """\
        name: Web
        target: {labels: {role: [web]}}
        mode: audit
        resources:
          - kind: nosuchkind
            name: a
          - kind: testfile
            name: b
            spec: {path: relative}
            require: testfile/a
        colour: blue
        """,
        (1, "name", "expected a name like 'web'"),
        (2, "target.labels.role", "got a list"),
        (5, "resources[0].kind", "unknown kind"),
        (9, "resources[1].spec.path", "expected an absolute path"),
        (10, "resources[1].require", "expected a list of strings"),
        (11, "colour", "unknown field"),
    ),
    Bad(
        "duplicate-manifest-names",
        {
            "web.yaml": HEAD + "resources: []\n",
            "web2.yaml": "# copy\nname: web\ntarget: {names: [a]}\nresources: []\n",
        },
        [("web2.yaml", 2, "name", "manifest name 'web' is also used by web.yaml:1")],
    ),
    Bad(
        "dangling-require",
        {
            "web.yaml": dedent(
                """\
                name: web
                target: {all: true}
                resources:
                  - kind: testfile
                    name: a
                    spec: {path: /a}
                  - kind: testfile
                    name: b
                    spec: {path: /b}
                    require: [testfile/a, testfile/nope]
                """
            )
        },
        [
            (
                "web.yaml",
                10,
                "resources[1].require[1]",
                "requires testfile/nope, which no manifest declares",
            )
        ],
    ),
    Bad(
        "require-cycle-across-files",
        {
            "base.yaml": dedent(
                """\
                name: base
                target: {all: true}
                resources:
                  - kind: testfile
                    name: a
                    spec: {path: /a}
                    require: [testfile/b]
                """
            ),
            "web.yaml": dedent(
                """\
                name: web
                target: {all: true}
                resources:
                  - kind: testfile
                    name: b
                    spec: {path: /b}
                    require:
                      - testfile/a
                """
            ),
        },
        [
            (
                "web.yaml",
                8,
                "resources[0].require[0]",
                "require cycle: testfile/a → testfile/b → testfile/a",
            )
        ],
    ),
    bad(
        "require-cycle-of-three-and-a-self-require",
        """\
        name: web
        target: {all: true}
        resources:
          - {kind: testfile, name: a, spec: {path: /a}, require: [testfile/b]}
          - {kind: testfile, name: b, spec: {path: /b}, require: [testfile/c]}
          - {kind: testfile, name: c, spec: {path: /c}, require: [testfile/a]}
          - {kind: testfile, name: d, spec: {path: /d}, require: [testfile/a, testfile/d]}
        """,
        (6, "resources[2].require[0]", "testfile/a → testfile/b → testfile/c → testfile/a"),
        (7, "resources[3].require[1]", "require cycle: testfile/d → testfile/d"),
    ),
    bad(
        "notify-and-subscribe-malformed",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testsvc
            name: web
            notify: testsvc/x
            subscribe:
              - testfile/conf
              - conf
              - [testfile/conf]
        """,
        (6, "resources[0].notify", "expected a list of strings, got a string ('testsvc/x')"),
        (9, "resources[0].subscribe[1]", "expected a resource id like 'file/motd' (kind/name)"),
        (10, "resources[0].subscribe[2]", "expected a string, got a list"),
    ),
    bad(
        "notify-to-a-kind-that-cannot-be-refreshed",
        """\
        name: web
        target: {all: true}
        resources:
          - {kind: testfile, name: a, spec: {path: /a}}
          - {kind: testsvc, name: web}
          - kind: testfile
            name: conf
            spec: {path: /conf}
            notify:
              - testsvc/web
              - testfile/a
        """,
        (
            11,
            "resources[2].notify[1]",
            "testfile/a cannot be notified: a testfile cannot be refreshed; only these kinds"
            " can be refreshed (restarted or reloaded): ",
        ),
    ),
    bad(
        "subscribe-on-a-kind-that-cannot-be-refreshed",
        """\
        name: web
        target: {all: true}
        resources:
          - {kind: testsvc, name: web}
          - kind: testfile
            name: conf
            spec: {path: /conf}
            subscribe: [testsvc/web]
        """,
        (
            8,
            "resources[1].subscribe",
            "a testfile cannot be refreshed, so it cannot subscribe; only these kinds can be",
        ),
    ),
    bad(
        "dangling-notify-and-subscribe",
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testsvc
            name: web
            subscribe: [testfile/nope]
            notify: [testsvc/gone, nosuchkind/x]
        """,
        (6, "resources[0].subscribe[0]", "subscribes to testfile/nope, which no manifest declares"),
        (7, "resources[0].notify[0]", "notifies testsvc/gone, which no manifest declares"),
        (7, "resources[0].notify[1]", "notifies nosuchkind/x, which no manifest declares"),
    ),
    bad(
        "cycle-through-notify-and-require",
        """\
        name: web
        target: {all: true}
        resources:
          - {kind: testsvc, name: web}
          - kind: testfile
            name: conf
            spec: {path: /conf}
            require: [testsvc/web]
            notify: [testsvc/web]
        """,
        (
            8,
            "resources[1].require[0]",
            "ordering cycle through notify, require: testsvc/web → testfile/conf → testsvc/web"
            " (each runs after the next)",
        ),
    ),
    bad(
        "a-resource-notifying-itself-is-a-cycle",
        HEAD + "resources:\n  - {kind: testsvc, name: web, notify: [testsvc/web]}\n",
        (4, "resources[0].notify[0]", "ordering cycle through notify: testsvc/web → testsvc/web"),
    ),
    Bad(
        "cycle-through-subscribe-across-files",
        {
            "base.yaml": manifest_text(
                "base",
                "{all: true}",
                "{kind: testfile, name: conf, spec: {path: /conf}, require: [testsvc/db]}",
            ),
            "web.yaml": manifest_text(
                "web",
                "{all: true}",
                "{kind: testsvc, name: web, subscribe: [testfile/conf], notify: [testsvc/db]}",
                "{kind: testsvc, name: db}",
            ),
        },
        [
            (
                "web.yaml",
                4,
                "resources[0].subscribe[0]",
                "ordering cycle through notify, require, subscribe: testfile/conf → testsvc/db"
                " → testsvc/web → testfile/conf",
            )
        ],
    ),
    Bad(
        "set-checks-wait-until-every-file-loads",
        {
            "web.yaml": HEAD + "resources:\n  - {kind: testfile, name: a, require: [testfile/b]}\n",
            "db.yaml": "name: db\ntarget: {all: true}\nresources: [\n",
        },
        [
            ("db.yaml", 4, "", "invalid YAML"),
            ("web.yaml", 4, "resources[0].spec.path", "expected an absolute path"),
        ],
    ),
]


@pytest.mark.parametrize("case", BAD, ids=lambda case: case.id)
def test_bad_manifest(case: Bad) -> None:
    sources = [(file, dedent(text)) for file, text in case.files.items()]
    with pytest.raises(ManifestInvalid) as info:
        load_all(sources)
    errors = info.value.errors
    assert [(e.file, e.line, e.field) for e in errors] == [e[:3] for e in case.expected]
    for error, (*_, fragment) in zip(errors, case.expected, strict=True):
        assert fragment in error.message, str(error)


def test_error_renders_as_file_line_field_message() -> None:
    with pytest.raises(ManifestInvalid) as info:
        load("web.yaml", HEAD + "resources:\n  - {kind: testfile, name: a, spec: {mode: 644}}\n")
    assert str(info.value) == "web.yaml:4: resources[0].spec.path: expected an absolute path"
    whole_file = ManifestError("web.yaml", 3, "", "invalid YAML: oops")
    assert str(whole_file) == "web.yaml:3: invalid YAML: oops"


# -- good manifests --------------------------------------------------------------

FULL = """\
# The web tier.
name: web
target:
  labels: {role: web, env: prod}
  names: [node-a]
mode: audit
resources:
  - kind: testfile
    name: etc
    spec: {path: /etc}
  - kind: testfile
    name: motd
    spec:
      path: /etc/motd
      mode: "0644"
      content: "hi\\n"
    require:
      - testfile/etc
    controls: [CIS-1.7.1, ISO-A.12]
"""


def test_full_manifest() -> None:
    manifest = load("web.yaml", FULL)
    assert manifest == Manifest(
        name="web",
        file="web.yaml",
        target=Target(labels={"role": "web", "env": "prod"}, names=("node-a",), all=False),
        mode=Mode.AUDIT,
        resources=(
            ResourceDecl(
                "testfile",
                "etc",
                {"path": "/etc"},
                index=0,
                line=8,
                identities=(Identity("path", "/etc"),),
            ),
            ResourceDecl(
                "testfile",
                "motd",
                {"path": "/etc/motd", "mode": "0644", "content": "hi\n"},
                require=("testfile/etc",),
                controls=("CIS-1.7.1", "ISO-A.12"),
                index=1,
                line=11,
                require_lines=(18,),
                identities=(Identity("path", "/etc/motd"),),
            ),
        ),
        source=FULL,
        name_line=2,
    )
    assert [r.id for r in manifest.resources] == ["testfile/etc", "testfile/motd"]
    assert manifest.resources[1].field("require", 0) == "resources[1].require[0]"


def test_notify_and_subscribe() -> None:
    text = dedent(
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: conf
            spec: {path: /etc/web.conf}
            notify: [testsvc/web]
          - kind: testsvc
            name: web
            require: [testfile/conf]
            subscribe:
              - testfile/conf
              - testsvc/db
            notify: [testsvc/web-2]
          - {kind: testsvc, name: db}
          - {kind: testsvc, name: web-2}
        """
    )
    conf, web, _, _ = load("web.yaml", text).resources
    assert (conf.notify, conf.notify_lines, conf.subscribe) == (("testsvc/web",), (7,), ())
    assert (web.require, web.require_lines) == (("testfile/conf",), (10,))
    assert (web.subscribe, web.subscribe_lines) == (("testfile/conf", "testsvc/db"), (12, 13))
    assert (web.notify, web.notify_lines) == (("testsvc/web-2",), (14,))
    assert web.relation("subscribe") == (web.subscribe, web.subscribe_lines)
    assert web.field("notify", 0) == "resources[1].notify[0]"
    # (after, before): a resource runs after what it requires or subscribes to,
    # and before what it notifies.
    assert list(web.edges()) == [
        ("testsvc/web", "testfile/conf", "require", 0),
        ("testsvc/web-2", "testsvc/web", "notify", 0),
        ("testsvc/web", "testfile/conf", "subscribe", 0),
        ("testsvc/web", "testsvc/db", "subscribe", 1),
    ]
    assert validate_set([load("web.yaml", text)]) == []


def test_refusing_a_notify_lists_the_kinds_that_can_be_refreshed() -> None:
    text = manifest_text(
        "web",
        "{all: true}",
        "{kind: testfile, name: a, spec: {path: /a}}",
        "{kind: testfile, name: b, spec: {path: /b}, notify: [testfile/a]}",
    )
    with pytest.raises(ManifestInvalid) as info:
        load("web.yaml", text)
    [error] = info.value.errors
    kinds = error.message.rsplit(": ", 1)[1].split(", ")
    assert "testsvc" in kinds
    assert "testfile" not in kinds and "file" not in kinds


def test_a_timeout_is_seconds_as_written_and_absent_means_the_kinds() -> None:
    text = manifest_text(
        "web",
        "{all: true}",
        "{kind: testfile, name: a, spec: {path: /a}, timeout: 120}",
        "{kind: testfile, name: b, spec: {path: /b}, timeout: 2.5}",
        "{kind: testfile, name: c, spec: {path: /c}}",
    )
    a, b, c = load("web.yaml", text).resources
    assert (a.timeout_s, b.timeout_s, c.timeout_s) == (120, 2.5, None)
    assert isinstance(a.timeout_s, int)  # 120 stays 120 in the catalog's JSON


@pytest.mark.parametrize(
    ("manifest_mode", "resource_mode", "expected"),
    [
        (None, None, Mode.ENFORCE),
        (None, "enforce", Mode.ENFORCE),
        (None, "audit", Mode.AUDIT),
        ("enforce", None, Mode.ENFORCE),
        ("enforce", "audit", Mode.AUDIT),
        ("audit", None, Mode.AUDIT),
        # Audit wins: a resource cannot opt out of its manifest's audit.
        ("audit", "enforce", Mode.AUDIT),
        ("audit", "audit", Mode.AUDIT),
    ],
)
def test_a_resource_runs_in_audit_if_it_or_its_manifest_says_audit(
    manifest_mode: str | None, resource_mode: str | None, expected: Mode
) -> None:
    own = f", mode: {resource_mode}" if resource_mode else ""
    text = manifest_text(
        "web", "{all: true}", f"{{kind: testfile, name: a, spec: {{path: /a}}{own}}}"
    )
    if manifest_mode:
        text = text.replace("resources:", f"mode: {manifest_mode}\nresources:")
    manifest = load("web.yaml", text)
    (decl,) = manifest.resources
    assert decl.mode == (Mode(resource_mode) if resource_mode else None)
    assert manifest.mode_of(decl) is expected


def test_defaults() -> None:
    manifest = load("db.yaml", "name: db\ntarget: {names: [db-1]}\nresources: []\n")
    assert manifest.mode is Mode.ENFORCE
    assert manifest.resources == ()
    assert manifest.target == Target(labels={}, names=("db-1",), all=False)


def test_optional_resource_fields_default_to_empty() -> None:
    text = manifest_text("web", "{all: true}", "{kind: testfile, name: a, spec: {path: /a}}")
    (decl,) = load("web.yaml", text).resources
    assert (decl.require, decl.controls, decl.require_lines) == ((), (), ())
    assert (decl.notify, decl.subscribe, decl.notify_lines, decl.subscribe_lines) == (
        (),
        (),
        (),
        (),
    )


def test_anchors_and_merge_keys() -> None:
    text = dedent(
        """\
        name: web
        target: {all: true}
        resources:
          - kind: testfile
            name: a
            spec: &defaults {path: /a, mode: "0600"}
          - kind: testfile
            name: b
            spec:
              <<: *defaults
              path: /b
        """
    )
    a, b = load("web.yaml", text).resources
    assert a.spec == {"path": "/a", "mode": "0600"}
    assert b.spec == {"path": "/b", "mode": "0600"}


def test_values_stay_plain_json_data() -> None:
    # Keys stay as written (YAML 1.1 would turn "on" into True) and dates stay
    # text, because catalogs are JSON.
    text = HEAD + "resources:\n  - {kind: testfile, name: a, spec: {path: /a, on: 2024-01-02}}\n"
    (decl,) = load("web.yaml", text).resources
    assert decl.spec == {"path": "/a", "on": "2024-01-02"}


def test_document_markers_are_allowed() -> None:
    manifest = load("web.yaml", "---\n" + HEAD + "resources: []\n---\n")
    assert manifest.name == "web"
    assert manifest.name_line == 2


def test_load_all_keeps_order_and_accepts_requires_across_files() -> None:
    base = manifest_text("base", "{all: true}", "{kind: testfile, name: a, spec: {path: /a}}")
    web = manifest_text(
        "web", "{all: true}", "{kind: testfile, name: b, spec: {path: /b}, require: [testfile/a]}"
    )
    loaded = load_all([("web.yaml", web), ("base.yaml", base)])
    assert [m.name for m in loaded] == ["web", "base"]
    assert validate_set(loaded) == []


def test_a_resource_declared_twice_across_manifests_is_not_a_set_error() -> None:
    # It is only a conflict for a node that both target; the compiler decides that.
    resource = "{kind: testfile, name: x, spec: {path: /x}}"
    one = manifest_text("one", "{names: [a]}", resource)
    two = manifest_text("two", "{names: [b]}", resource)
    assert validate_set([load("one.yaml", one), load("two.yaml", two)]) == []


# -- targets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "node", "labels", "expected"),
    [
        (Target(all=True), "any", {}, True),
        (Target(labels={"role": "web"}), "n1", {"role": "web", "env": "prod"}, True),
        (Target(labels={"role": "web", "env": "prod"}), "n1", {"role": "web"}, False),
        (Target(labels={"role": "web"}), "n1", {"role": "db"}, False),
        (Target(labels={"role": "web"}), "n1", {}, False),
        (Target(names=("n1", "n2")), "n2", {}, True),
        (Target(names=("n1",)), "n3", {"role": "web"}, False),
        # Labels and names add up: either one selects the node.
        (Target(labels={"role": "web"}, names=("n9",)), "n9", {}, True),
        (Target(labels={"role": "web"}, names=("n9",)), "n1", {"role": "web"}, True),
        (Target(), "n1", {"role": "web"}, False),
    ],
)
def test_target_matches(target: Target, node: str, labels: dict[str, str], expected: bool) -> None:
    assert target.matches(Subject(node, labels)) is expected


@pytest.mark.parametrize("written", ["all", "' all '", "{all: true}"])
def test_target_all_is_every_node_however_it_is_written(written: str) -> None:
    """`target: all` is what `plumb manifests` prints: it must never read as a label."""
    target = load("a.yaml", f"name: a\ntarget: {written}\nresources: []\n").target
    assert target == Target(all=True)
    assert target.matches(Subject("any", {}))
