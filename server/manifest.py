"""Manifests: the YAML files operators push, checked with file:line:field errors.

One manifest per file (``web.yaml``)::

    name: web                   # [a-z0-9][a-z0-9_.-]*, at most 63 characters
    target:                     # labels, names and/or a selector, or all: true
      labels: {role: web}
      match: "os.family=debian,env!=prod"   # server/targeting.py
    mode: enforce               # enforce (default) | audit
    resources:
      - kind: file
        name: motd
        spec: {path: /etc/motd, content: "hi\\n"}
        require: [file/etc]
        notify: [service/web]   # refresh service/web when this file changes
        controls: [CIS-1.7.1]
      - kind: service
        name: web
        spec: {unit: web.service}
        subscribe: [file/motd]  # the same relation, written on the receiver
        timeout: 300            # seconds for its read, apply, refresh; default: its kind's
      - kind: file
        name: token
        spec: {path: /etc/app/token, content: "s3cr3t\\n", mode: "0600"}
        sensitive: true         # its values never in logs, reports or the store: "(sensitive)"
      - kind: file
        name: banner
        spec: {path: /etc/issue, content: "authorised use only\\n"}
        mode: audit             # this one only: read and report, never change

A resource's ``mode`` (enforce | audit; absent: the manifest's) is combined
with its manifest's, and audit wins: a resource is enforced only if neither
says audit, as in Rudder. So ``mode: enforce`` on a resource of an audit
manifest leaves it in audit (see ``server.compiler``).

``require``, ``notify`` and ``subscribe`` are lists of resource ids
(``kind/name``). All three order resources: a resource runs after what it
requires or subscribes to, and before what it notifies. ``notify`` and
``subscribe`` are one relation seen from either end: the receiver (the
subscriber, the notified) is refreshed (``Kind.refresh``: a restart, a
reload) after its own apply when the other end was changed in the same run,
so the receiver's kind must be refreshable; the compiled catalog carries the
relation only as the receiver's ``subscribe`` (see ``server.compiler``).

:func:`load` checks one file: its structure, every spec with its kind's
pure ``parse``, and that every notify/subscribe receiver can be refreshed.
:func:`validate_set` checks what only the whole set of a revision shows:
duplicate manifest names, dangling ids in require/notify/subscribe and
cycles through all three together. :func:`load_all` does both and reports
every problem at once.

PyYAML's node tree is walked by hand (instead of ``yaml.safe_load``) because
only the nodes know their lines; the walk records the line of every field
path so that any later error, including one a kind raises about its spec,
can point at the line that caused it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import yaml

from modules import registry
from modules.base import Identity, Kind, Mode, Refreshable
from modules.catalog import resource_id
from modules.errors import SpecError
from server import targeting
from server.errors import ManifestError, ManifestInvalid

__all__ = [
    "RELATIONS",
    "VERBS",
    "Manifest",
    "ManifestError",
    "ManifestInvalid",
    "ResourceDecl",
    "Target",
    "load",
    "load_all",
    "redacted",
    "render_path",
    "validate_set",
]

Key = str | int
FieldPath = tuple[Key, ...]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
NAME_MAX = 63
# "kind/name": the kind has no slash, the name may (file names often do).
REQUIRE_RE = re.compile(r"[^/\s]+/\S.*\Z")

TOP_KEYS = ("name", "target", "mode", "resources")
TARGET_KEYS = ("labels", "names", "match", "all")
RESOURCE_KEYS = (
    *("kind", "name", "spec", "require", "notify", "subscribe", "controls", "timeout"),
    *("sensitive", "mode"),
)
# The fields that name other resources, and how an error phrases each.
RELATIONS = ("require", "notify", "subscribe")
VERBS = {"require": "requires", "notify": "notifies", "subscribe": "subscribes to"}

# A resource's ``timeout`` (seconds): a day is already far more than any
# package transaction should take; beyond it a typo is likelier than intent.
TIMEOUT_MAX_S = 86_400

# Aliases can make a small file expand into a huge tree ("billion laughs");
# no real manifest comes near this many values.
MAX_VALUES = 100_000


@dataclasses.dataclass(frozen=True)
class Target:
    """Which nodes a manifest applies to.

    A node matches if ``all`` is set, or if its name is in ``names``, or if
    it carries every label in ``labels`` with the same value, or if the
    selector ``match`` (server/targeting.py: names, labels and facts) holds
    for it. The ways given add up: any one of them selects the node.
    """

    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    names: tuple[str, ...] = ()
    all: bool = False
    match: targeting.Selector | None = None

    def matches(self, node: targeting.Subject) -> bool:
        if self.all or node.name in self.names:
            return True
        if self.match is not None and self.match.matches(node):
            return True
        wanted = self.labels.items()
        return bool(wanted) and all(node.labels.get(k) == v for k, v in wanted)

    def __str__(self) -> str:
        """What ``plumb manifests`` shows: ``all``, or each way joined by " or "."""
        if self.all:
            return "all"
        ways = [",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))] if self.labels else []
        if self.names:
            ways.append(f"name in ({','.join(self.names)})")
        if self.match is not None:
            ways.append(str(self.match))
        return " or ".join(ways)


@dataclasses.dataclass(frozen=True)
class ResourceDecl:
    """One resource as a manifest declares it, with the lines later errors need."""

    kind: str
    name: str
    spec: Mapping[str, Any]
    require: tuple[str, ...] = ()
    controls: tuple[str, ...] = ()
    index: int = 0  # position in the manifest's resources list, for field paths
    line: int = 0  # line of the resource's list item
    require_lines: tuple[int, ...] = ()  # line of each require entry
    notify: tuple[str, ...] = ()  # ids refreshed after this one when it changes
    subscribe: tuple[str, ...] = ()  # ids after which this one is refreshed when they change
    notify_lines: tuple[int, ...] = ()
    subscribe_lines: tuple[int, ...] = ()
    #: The real objects it manages (its kind's ``identities`` of the parsed spec).
    identities: tuple[Identity, ...] = ()
    #: Seconds the agent gives it (``timeout``); None: its kind's ``timeout_s``.
    timeout_s: float | None = None
    #: Its values (desired and found) are secrets: never shown (``sensitive``).
    sensitive: bool = False
    #: Its own ``mode``; None when it says none. Audit, in it or in its
    #: manifest, wins (:meth:`Manifest.mode_of`).
    mode: Mode | None = None

    @property
    def id(self) -> str:
        return resource_id(self.kind, self.name)

    def relation(self, field: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The ids of ``field`` (one of RELATIONS) and the line of each."""
        return {
            "require": (self.require, self.require_lines),
            "notify": (self.notify, self.notify_lines),
            "subscribe": (self.subscribe, self.subscribe_lines),
        }[field]

    def edges(self) -> Iterator[tuple[str, str, str, int]]:
        """Every ordering edge this resource declares, as ``(after, before, field, index)``.

        ``after`` runs after ``before``: a require or subscribe entry orders
        this resource after it, a notify entry orders it before the entry.
        """
        for field in RELATIONS:
            for index, other in enumerate(self.relation(field)[0]):
                after, before = (other, self.id) if field == "notify" else (self.id, other)
                yield after, before, field, index

    def field(self, *rest: Key) -> str:
        """A field path in this resource: ``field("require", 0)`` → ``resources[2].require[0]``."""
        return render_path(("resources", self.index, *rest))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One valid manifest file."""

    name: str
    file: str
    target: Target
    mode: Mode = Mode.ENFORCE
    resources: tuple[ResourceDecl, ...] = ()
    source: str = ""  # the file's text as pushed, kept for the revision
    name_line: int = 1

    def mode_of(self, decl: ResourceDecl) -> Mode:
        """The mode ``decl`` runs in: audit if this manifest or ``decl`` itself says audit.

        Audit wins because it is the safe side of a disagreement: whoever
        asked for audit wanted nothing changed, and an enforce elsewhere is
        no reason to change it after all.
        """
        return Mode.AUDIT if Mode.AUDIT in (self.mode, decl.mode) else Mode.ENFORCE


def render_path(path: FieldPath) -> str:
    """``("resources", 0, "spec", "mode")`` → ``resources[0].spec.mode``."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else f".{key}" if out else key
    return out


# -- loading one file ---------------------------------------------------------


def load(file: str, text: str) -> Manifest:
    """Parse and check one manifest; ManifestInvalid lists every problem in it."""
    report = _Report(file)
    manifest = None
    root = _compose(text, report)
    if root is not None:
        report.lines[()] = _line(root)  # where "missing required field" points
        try:
            document = _Builder(report).build(root, ())
        except _TooLarge:
            report.error((), f"the document expands to more than {MAX_VALUES} values")
        else:
            manifest = _check_manifest(report, document, text)
    if report.errors or manifest is None:
        raise ManifestInvalid(report.errors)
    return manifest


def load_all(sources: Iterable[tuple[str, str]]) -> tuple[Manifest, ...]:
    """Load every ``(file, text)`` and check them as one set.

    ManifestInvalid lists every problem in every file. The set is checked
    only when every file loads, because a broken file would make requires
    into it look dangling.
    """
    manifests: list[Manifest] = []
    errors: list[ManifestError] = []
    for file, text in sources:
        try:
            manifests.append(load(file, text))
        except ManifestInvalid as exc:
            errors.extend(exc.errors)
    if not errors:
        errors = validate_set(manifests)
    if errors:
        raise ManifestInvalid(errors)
    return tuple(manifests)


class _Report:
    """Collects one file's errors, each placed at the line of its field."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[FieldPath, int] = {}
        self.errors: list[ManifestError] = []

    def line(self, path: FieldPath) -> int:
        """The line of ``path``, or of its closest parent that the file has."""
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: FieldPath, message: str, line: int | None = None) -> None:
        where = self.line(path) if line is None else line
        self.errors.append(ManifestError(self.file, where, render_path(path), message))


class _TooLarge(Exception):
    """The document expands past MAX_VALUES; raised out of the recursive walk."""


def _compose(text: str, report: _Report) -> yaml.Node | None:
    """The file's single YAML document as a node tree, or None after reporting why not."""
    try:
        documents = [d for d in yaml.compose_all(text, Loader=yaml.SafeLoader) if not _empty(d)]
    except yaml.MarkedYAMLError as exc:
        report.error((), _yaml_message(exc), line=_yaml_line(exc))
        return None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        message = f"invalid YAML: unacceptable character #x{exc.character:04x}: {exc.reason}"
        report.error((), message, line=line)
        return None
    if not documents:
        report.error((), "the file is empty; expected a manifest with name, target and resources")
        return None
    if len(documents) > 1:
        line = _line(documents[1])
        report.error((), "found a second YAML document; put one manifest per file", line)
        return None
    return documents[0]


def _empty(node: yaml.Node) -> bool:
    """Whether a document is empty, as after a trailing ``---``."""
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null") and node.value == ""


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.problem and exc.context:
        started = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message += f" ({exc.context}{started})"
    return message


def _yaml_line(exc: yaml.MarkedYAMLError) -> int:
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark else 1


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Builder:
    """Turns a node tree into plain values, recording the line of every field."""

    # Catalogs are JSON, so YAML-only scalars (timestamps, binary) are kept as
    # the text that was written rather than as date or bytes objects.
    PLAIN = (str, int, float, bool, type(None))
    COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")

    def __init__(self, report: _Report) -> None:
        self.report = report
        self.loader = yaml.SafeLoader("")
        self.budget = MAX_VALUES
        self.open: set[int] = set()  # nodes being built, to catch recursive aliases

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooLarge
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.open:
            self.report.error(path, "an alias refers to a value that contains it", _line(node))
            return None
        if node.tag not in self.COLLECTION_TAGS:
            self.report.error(path, f"unsupported tag {node.tag!r}", _line(node))
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return self.sequence(node, path)
            return None  # PyYAML has no other kind of node
        finally:
            self.open.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: FieldPath) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.report.error(path, f"cannot read this value: {problem}", _line(node))
            return None
        return value if isinstance(value, self.PLAIN) else node.value

    def sequence(self, node: yaml.SequenceNode, path: FieldPath) -> list[Any]:
        items = []
        for index, child in enumerate(node.value):
            self.report.lines[(*path, index)] = _line(child)
            items.append(self.build(child, (*path, index)))
        return items

    def mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[str, Any]:
        own = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
        try:
            # Resolve "<<: *anchor" merge keys the way PyYAML's own loader does:
            # merged pairs come first, and the mapping's own keys override them.
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            self.report.error(path, f"invalid merge: {exc.problem}", _yaml_line(exc))
            return {}
        merged = len(node.value) - own
        result: dict[str, Any] = {}
        written: dict[str, int] = {}  # the mapping's own keys and their lines
        for position, (key_node, value_node) in enumerate(node.value):
            key = self.key(key_node, path, written if position >= merged else {})
            if key is not None:
                self.report.lines[(*path, key)] = _line(key_node)
                result[key] = self.build(value_node, (*path, key))
                if position >= merged:
                    written[key] = _line(key_node)
        return result

    def key(self, node: yaml.Node, path: FieldPath, written: Mapping[str, int]) -> str | None:
        """A mapping key as written (so ``on:`` stays "on", not True), or None if unusable."""
        if not isinstance(node, yaml.ScalarNode):
            self.report.error(path, f"expected a string key, got {_node_kind(node)}", _line(node))
            return None
        key = str(node.value)
        if key in written:
            message = f"duplicate key (first at line {written[key]})"
            self.report.error((*path, key), message, _line(node))
            return None
        return key


def _node_kind(node: yaml.Node) -> str:
    return "a mapping" if isinstance(node, yaml.MappingNode) else "a list"


# -- checking one manifest ----------------------------------------------------


def _check_manifest(report: _Report, doc: Any, text: str) -> Manifest | None:
    if not _expect(report, (), doc, dict, "a mapping with name, target and resources"):
        return None
    _check_keys(report, (), doc, TOP_KEYS, required=("name", "target", "resources"))
    name = _check_name(report, doc["name"]) if "name" in doc else ""
    target = _check_target(report, doc["target"]) if "target" in doc else Target()
    mode = _check_mode(report, ("mode",), doc.get("mode", Mode.ENFORCE.value))
    resources = _check_resources(report, doc["resources"]) if "resources" in doc else ()
    return Manifest(
        name=name,
        file=report.file,
        target=target,
        mode=mode,
        resources=resources,
        source=text,
        name_line=report.line(("name",)),
    )


def _check_name(report: _Report, value: Any) -> str:
    if not _expect(report, ("name",), value, str, "a string"):
        return ""
    if not NAME_RE.match(value) or len(value) > NAME_MAX:
        rule = f"lowercase letters, digits, '_', '.', '-'; at most {NAME_MAX} characters"
        report.error(("name",), f"expected a name like 'web' ({rule}), got {value!r}")
    return str(value)


def _check_mode(report: _Report, path: FieldPath, value: Any) -> Mode:
    """A manifest's or a resource's ``mode``: one of :class:`modules.base.Mode`."""
    modes = [m.value for m in Mode]
    if isinstance(value, str) and value in modes:
        return Mode(value)
    message = f"expected {' or '.join(modes)}, got {_describe(value)}"
    if len(path) > 1 and re.fullmatch(r"0?[0-7]{3,4}", str(value)):
        # A file's permissions written one level too high.
        message += "; permissions such as '0644' go in the spec (spec.mode)"
    report.error(path, message)
    return Mode.ENFORCE


def _check_target(report: _Report, value: Any) -> Target:
    path: FieldPath = ("target",)
    if isinstance(value, str):  # target: "role=web,env!=prod", a selector alone
        if value.strip() == targeting.ALL:  # what `plumb manifests` prints for all: true
            return Target(all=True)
        return Target(match=_check_selector(report, path, value))
    expected = "a selector or a mapping with labels, names, match or all"
    if not _expect(report, path, value, dict, expected):
        return Target()
    _check_keys(report, path, value, TARGET_KEYS, required=())
    labels = _check_labels(report, value["labels"]) if "labels" in value else {}
    names = _strings(report, (*path, "names"), value["names"]) if "names" in value else ()
    match = None
    if "match" in value and _expect(report, (*path, "match"), value["match"], str, "a selector"):
        match = _check_selector(report, (*path, "match"), value["match"])
    everyone = value.get("all", False)
    if not _expect(report, (*path, "all"), everyone, bool, "true or false"):
        everyone = False
    _check_target_shape(report, value, everyone)
    return Target(labels=labels, names=names, all=everyone, match=match)


def _check_selector(report: _Report, path: FieldPath, text: str) -> targeting.Selector | None:
    try:
        return targeting.parse(text)
    except targeting.SelectorError as exc:
        report.error(path, str(exc))
        return None


def _check_target_shape(report: _Report, target: Mapping[str, Any], everyone: bool) -> None:
    """A target must select something, and say so one way only."""
    path: FieldPath = ("target",)
    if not any(key in target for key in TARGET_KEYS):
        report.error(path, "expected at least one of labels, names, match or all: true")
    elif everyone and any(k in target for k in ("labels", "names", "match")):
        report.error((*path, "all"), "all: true cannot be combined with labels, names or match")
    elif "all" in target and not everyone and len(target) == 1:
        report.error(
            (*path, "all"), "all: false alone targets no node; give labels, names or match"
        )
    if target.get("names") == []:
        report.error((*path, "names"), "expected at least one node name")


def _check_labels(report: _Report, value: Any) -> dict[str, str]:
    path: FieldPath = ("target", "labels")
    if not _expect(report, path, value, dict, "a mapping of label names to values"):
        return {}
    if not value:
        report.error(path, "expected at least one label (use all: true to target every node)")
    for key, label in value.items():
        _expect(report, (*path, key), label, str, "a string (quote numbers and booleans)")
        reserved = targeting.reserved_label(str(key))
        if reserved:
            report.error((*path, key), f"{reserved}; to target by it, write match: {key}=...")
    return {k: v for k, v in value.items() if isinstance(v, str)}


def _check_resources(report: _Report, value: Any) -> tuple[ResourceDecl, ...]:
    if not _expect(report, ("resources",), value, list, "a list of resources ([] for none)"):
        return ()
    decls = [_check_resource(report, index, item) for index, item in enumerate(value)]
    valid = tuple(d for d in decls if d is not None)
    _check_unique(report, valid)
    return valid


def _check_resource(report: _Report, index: int, item: Any) -> ResourceDecl | None:
    path: FieldPath = ("resources", index)
    if not _expect(report, path, item, dict, "a mapping with kind, name and spec"):
        return None
    _check_keys(report, path, item, RESOURCE_KEYS, required=("kind", "name"))
    kind = _nonempty(report, (*path, "kind"), item["kind"]) if "kind" in item else ""
    name = _nonempty(report, (*path, "name"), item["name"]) if "name" in item else ""
    spec, identities = _check_spec(report, path, kind, item.get("spec", {}))
    ids = {field: _check_ids(report, path, field, item.get(field, [])) for field in RELATIONS}
    controls = _strings(report, (*path, "controls"), item.get("controls", []))
    timeout = _check_timeout(report, (*path, "timeout"), item)
    sensitive = item.get("sensitive", False)
    if not isinstance(sensitive, bool):
        report.error((*path, "sensitive"), f"expected true or false, got {_describe(sensitive)}")
        sensitive = True  # refused anyway; never shown meanwhile
    mode = _check_mode(report, (*path, "mode"), item["mode"]) if "mode" in item else None
    _check_refreshable(report, path, kind, ids["notify"], ids["subscribe"])
    if not kind or not name:
        return None
    lines = {
        field: tuple(report.line((*path, field, j)) for j in range(len(found)))
        for field, found in ids.items()
    }
    return ResourceDecl(
        kind,
        name,
        spec,
        ids["require"],
        controls,
        index,
        report.line(path),
        require_lines=lines["require"],
        notify=ids["notify"],
        subscribe=ids["subscribe"],
        notify_lines=lines["notify"],
        subscribe_lines=lines["subscribe"],
        identities=identities,
        timeout_s=timeout,
        sensitive=sensitive,
        mode=mode,
    )


def _check_spec(
    report: _Report, path: FieldPath, kind_name: str, spec: Any
) -> tuple[dict[str, Any], tuple[Identity, ...]]:
    """The raw spec, after the kind's own parse has had its say about it, and what it manages."""
    spec_path = (*path, "spec")
    if not _expect(report, spec_path, spec, dict, "a mapping"):
        return {}, ()
    kind = _kind(report, path, kind_name) if kind_name else None
    identities: tuple[Identity, ...] = ()
    if kind is not None:
        try:
            # Parse a copy: a kind must not be able to alter what gets stored.
            identities = kind.identities(kind.parse(copy.deepcopy(spec)))
        except SpecError as exc:
            report.error((*spec_path, *_spec_path(spec, exc.field)), exc.message)
    return dict(spec), identities


def _kind(report: _Report, path: FieldPath, name: str) -> Kind[Any, Any] | None:
    try:
        return registry.get(name)
    except SpecError as exc:
        report.error((*path, "kind"), exc.message)
        return None


def _spec_path(spec: Any, field: str) -> FieldPath:
    """Where a SpecError's dotted ``field`` ("rules.0.port") lies inside ``spec``.

    The walk follows the actual value because kinds number list items and
    keys may themselves contain dots ("net.ipv4.ip_forward").
    """
    parts = [p for p in re.sub(r"\[(\d+)\]", r".\1", field).split(".") if p]
    path: list[Key] = []
    value = spec
    while parts:
        key, used = _next_key(value, parts)
        path.append(key)
        parts = parts[used:]
        value = _child(value, key)
    return tuple(path)


def _next_key(value: Any, parts: Sequence[str]) -> tuple[Key, int]:
    """The key that starts ``parts`` in ``value``, and how many parts it takes up."""
    if isinstance(value, dict):
        for count in range(len(parts), 0, -1):
            joined = ".".join(parts[:count])
            if joined in value:
                return joined, count
    first = parts[0]
    return (int(first) if first.isdigit() else first), 1


def _child(value: Any, key: Key) -> Any:
    if isinstance(value, dict):
        return value.get(str(key))
    if isinstance(value, list) and isinstance(key, int) and key < len(value):
        return value[key]
    return None


def _check_ids(report: _Report, path: FieldPath, field: str, value: Any) -> tuple[str, ...]:
    """A require, notify or subscribe list: resource ids, each checked at its own line."""
    ids = _strings(report, (*path, field), value)
    for index, entry in enumerate(ids):
        if not REQUIRE_RE.match(entry):
            message = f"expected a resource id like 'file/motd' (kind/name), got {entry!r}"
            report.error((*path, field, index), message)
    return ids


def _check_refreshable(
    report: _Report,
    path: FieldPath,
    kind: str,
    notify: Sequence[str],
    subscribe: Sequence[str],
) -> None:
    """The receiving end of notify/subscribe must be a kind that can be refreshed.

    The receiver's kind is part of its id, so this needs no other manifest.
    An id of an unknown kind is left to the dangling check: no manifest can
    declare such a resource.
    """
    if subscribe and _refreshable(kind) is False:
        message = f"a {kind} cannot be refreshed, so it cannot subscribe; {_refreshable_kinds()}"
        report.error((*path, "subscribe"), message)
    for index, entry in enumerate(notify):
        receiver = entry.split("/", 1)[0]
        if REQUIRE_RE.match(entry) and _refreshable(receiver) is False:
            message = (
                f"{entry} cannot be notified: a {receiver} cannot be refreshed;"
                f" {_refreshable_kinds()}"
            )
            report.error((*path, "notify", index), message)


def _refreshable(kind_name: str) -> bool | None:
    """Whether the kind can be refreshed; None if there is no such kind (or it cannot load)."""
    try:
        return isinstance(registry.get(kind_name), Refreshable) if kind_name else None
    except (SpecError, ImportError):
        return None


def _refreshable_kinds() -> str:
    """Which kinds can be refreshed, for messages refusing one that cannot."""
    kinds = [name for name in registry.names() if _refreshable(name)]
    if not kinds:
        return "no kind can be refreshed (restarted or reloaded) yet"
    return f"only these kinds can be refreshed (restarted or reloaded): {', '.join(kinds)}"


def _check_unique(report: _Report, decls: Sequence[ResourceDecl]) -> None:
    """Within one manifest, a kind/name may be declared once."""
    first: dict[str, ResourceDecl] = {}
    for decl in decls:
        if decl.id in first:
            earlier = report.line(("resources", first[decl.id].index, "name"))
            message = f"{decl.id} is already declared at line {earlier}"
            report.error(("resources", decl.index, "name"), message)
        else:
            first[decl.id] = decl


# -- small typed checks -------------------------------------------------------


def _expect(report: _Report, path: FieldPath, value: Any, kind: type, expected: str) -> bool:
    """Whether ``value`` is a ``kind``; reports "expected X, got Y" if not."""
    # bool is an int in Python, but "true" where a number belongs is an error.
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return True
    report.error(path, f"expected {expected}, got {_describe(value)}")
    return False


def _check_timeout(report: _Report, path: FieldPath, item: Mapping[str, Any]) -> float | None:
    """A resource's ``timeout``: seconds, more than 0 and at most TIMEOUT_MAX_S; None if absent."""
    if "timeout" not in item:
        return None
    value = item["timeout"]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 < value <= TIMEOUT_MAX_S:  # NaN fails the comparison too
        expected = f"a number of seconds, more than 0 and at most {TIMEOUT_MAX_S}"
        report.error(path, f"expected {expected}, got {_describe(value)}")
        return None
    return float(value) if isinstance(value, float) else int(value)


def _nonempty(report: _Report, path: FieldPath, value: Any) -> str:
    if _expect(report, path, value, str, "a string") and not value.strip():
        report.error(path, "expected a non-empty string")
        return ""
    return value if isinstance(value, str) else ""


def _strings(report: _Report, path: FieldPath, value: Any) -> tuple[str, ...]:
    """A list of non-empty strings; each bad entry is reported at its own line."""
    if not _expect(report, path, value, list, "a list of strings"):
        return ()
    good = []
    for index, item in enumerate(value):
        if _expect(report, (*path, index), item, str, "a string") and item.strip():
            good.append(item)
        elif isinstance(item, str):
            report.error((*path, index), "expected a non-empty string")
    return tuple(good)


def _check_keys(
    report: _Report,
    path: FieldPath,
    mapping: Mapping[str, Any],
    allowed: Sequence[str],
    required: Sequence[str],
) -> None:
    """Reports unknown keys at their line and missing ones at the mapping's line."""
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            report.error(
                (*path, key), f"unknown field ({hint}expected one of: {', '.join(allowed)})"
            )
    for key in required:
        if key not in mapping:
            report.error((*path, key), "missing required field", line=report.line(path))


def _describe(value: Any) -> str:
    """``value``'s YAML type for "got ..." messages, with short scalars shown."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    noun = {bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), "a string")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{noun} ({shown})"


# -- checking a set of manifests ----------------------------------------------


def redacted(manifest: Manifest) -> str:
    """The manifest's text with each ``sensitive: true`` resource's lines replaced by one
    comment naming it: what a diff or a listing may show of it.

    A resource's lines are its list item's line and every line after it that
    is blank or indented deeper. A change inside one shows in no text diff;
    the catalog diff still names the fields that changed.
    """
    lines = manifest.source.splitlines(keepends=True)
    hidden: dict[int, tuple[int, str]] = {}  # first line index -> (line count, comment)
    for decl in manifest.resources:
        if not decl.sensitive or not 0 < decl.line <= len(lines):
            continue
        first = decl.line - 1
        indent = _indent(lines[first])
        end = first + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
            end += 1
        count = end - first
        comment = f"{' ' * indent}# (sensitive: {decl.id}, {count} line(s) not shown)\n"
        hidden[first] = (count, comment)
    out: list[str] = []
    index = 0
    while index < len(lines):
        if index in hidden:
            count, comment = hidden[index]
            out.append(comment)
            index += count
        else:
            out.append(lines[index])
            index += 1
    return "".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def validate_set(manifests: Sequence[Manifest]) -> list[ManifestError]:
    """Problems that only the whole set of one revision shows.

    Duplicate manifest names, require/notify/subscribe ids that no manifest in
    the set declares, and cycles through those three relations together (a
    cycle of requires only is called a require cycle). Two manifests
    declaring the same resource is not an error here: it is one only for a
    node both target (see server.compiler).
    """
    return [*_duplicate_names(manifests), *_dangling(manifests), *_cycles(manifests)]


def _duplicate_names(manifests: Sequence[Manifest]) -> list[ManifestError]:
    first: dict[str, Manifest] = {}
    errors = []
    for m in manifests:
        if m.name in first:
            other = first[m.name]
            message = f"manifest name {m.name!r} is also used by {other.file}:{other.name_line}"
            errors.append(ManifestError(m.file, m.name_line, "name", message))
        else:
            first[m.name] = m
    return errors


def _dangling(manifests: Sequence[Manifest]) -> list[ManifestError]:
    declared = {r.id for m in manifests for r in m.resources}
    return [
        ManifestError(m.file, lines[j], r.field(field, j), message)
        for m in manifests
        for r in m.resources
        for field in RELATIONS
        for ids, lines in [r.relation(field)]
        for j, wanted in enumerate(ids)
        if wanted not in declared
        for message in [f"{VERBS[field]} {wanted}, which no manifest declares"]
    ]


def _cycles(manifests: Sequence[Manifest]) -> list[ManifestError]:
    """One error per ordering cycle, at the require/notify/subscribe entry that closes it."""
    # id -> ids it runs after, ordered, without repeats; every declared id is a
    # key first, so the walk starts in declaration order.
    edges: dict[str, dict[str, None]] = {r.id: {} for m in manifests for r in m.resources}
    where: dict[tuple[str, str], tuple[str, int, str, str]] = {}  # edge -> file, line, path, field
    for m in manifests:
        for r in m.resources:
            for after, before, field, j in r.edges():
                edges.setdefault(after, {})[before] = None
                line = r.relation(field)[1][j]
                where.setdefault((after, before), (m.file, line, r.field(field, j), field))
    errors = []
    for cycle in _find_cycles({k: list(v) for k, v in edges.items()}):
        file, line, path, _ = where[(cycle[-2], cycle[-1])]
        fields = {where[edge][3] for edge in itertools.pairwise(cycle)}
        errors.append(ManifestError(file, line, path, _cycle_message(cycle, fields)))
    return errors


def _cycle_message(cycle: Sequence[str], fields: set[str]) -> str:
    """``a → b → a`` reads "a runs after b, which runs after a"."""
    shown = " → ".join(cycle)
    if fields == {"require"}:
        return f"require cycle: {shown}"
    return f"ordering cycle through {', '.join(sorted(fields))}: {shown} (each runs after the next)"


def _find_cycles(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Each cycle closed by a back edge of a depth-first walk, as ``[a, b, ..., a]``.

    Iterative, because a long require chain would overflow Python's stack.
    """
    on_path: dict[str, int] = {}  # id -> position in the current path
    done: set[str] = set()
    cycles: list[list[str]] = []
    for start in edges:
        if start in done:
            continue
        path, pending = [start], [iter(edges[start])]
        on_path[start] = 0
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                finished = path.pop()
                del on_path[finished]
                done.add(finished)
                pending.pop()
            elif nxt in on_path:
                cycles.append([*path[on_path[nxt] :], nxt])
            elif nxt not in done:
                on_path[nxt] = len(path)
                path.append(nxt)
                pending.append(iter(edges.get(nxt, ())))
    return cycles
