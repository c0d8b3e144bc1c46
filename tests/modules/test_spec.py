"""SpecReader: every case is raw spec + what a kind asks for → value or SpecError."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

import pytest

from modules.errors import SpecError
from modules.spec import Presence, SpecReader, describe


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"


@dataclasses.dataclass(frozen=True)
class Fails:
    """The expected SpecError: its field and a fragment of its message."""

    field: str
    fragment: str


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    raw: Any
    read: Callable[[SpecReader], object]
    expected: object  # the value read, or Fails


def _nested(reader: SpecReader) -> object:
    rules = reader.mappings("rules")
    return [rule.integer("dport", required=True) for rule in rules]


def _inner(reader: SpecReader) -> object:
    inner = reader.mapping("inner")
    return None if inner is None else inner.string("a")


CASES = [
    # string
    Case("string", {"a": "x"}, lambda r: r.string("a"), "x"),
    Case("string empty is a string", {"a": ""}, lambda r: r.string("a"), ""),
    Case("string not given", {}, lambda r: r.string("a"), None),
    Case("string default", {}, lambda r: r.string("a", default="d"), "d"),
    Case("string required", {}, lambda r: r.string("a", required=True), Fails("a", "required")),
    Case(
        "string got int",
        {"a": 644},
        lambda r: r.string("a"),
        Fails("a", "expected a string, got integer 644"),
    ),
    Case(
        "string got null",
        {"a": None},
        lambda r: r.string("a", default="d"),
        Fails("a", "expected a string, got null"),
    ),
    Case(
        "string hint",
        {"a": 1},
        lambda r: r.string("a", hint="quote it"),
        Fails("a", "got integer 1 (quote it)"),
    ),
    # integer
    Case("integer", {"n": 3}, lambda r: r.integer("n"), 3),
    Case("integer default", {}, lambda r: r.integer("n", default=7), 7),
    Case("integer not bool", {"n": True}, lambda r: r.integer("n"), Fails("n", "boolean true")),
    Case("integer not float", {"n": 1.5}, lambda r: r.integer("n"), Fails("n", "number 1.5")),
    Case(
        "integer not str",
        {"n": "3"},
        lambda r: r.integer("n"),
        Fails("n", "expected an integer, got string '3'"),
    ),
    # boolean
    Case("boolean", {"b": True}, lambda r: r.boolean("b"), True),
    Case("boolean default is false", {}, lambda r: r.boolean("b"), False),
    Case("boolean not int", {"b": 1}, lambda r: r.boolean("b"), Fails("b", "got integer 1")),
    Case("boolean not 'yes'", {"b": "yes"}, lambda r: r.boolean("b"), Fails("b", "'yes'")),
    # choice
    Case("choice", {"c": "green"}, lambda r: r.choice("c", Color, default=Color.RED), Color.GREEN),
    Case("choice default", {}, lambda r: r.choice("c", Color, default=Color.RED), Color.RED),
    Case(
        "choice unknown",
        {"c": "blue"},
        lambda r: r.choice("c", Color, default=Color.RED),
        Fails("c", "expected one of red, green, got string 'blue'"),
    ),
    Case(
        "choice wrong type",
        {"state": False},
        lambda r: r.choice("state", Presence, default=Presence.PRESENT),
        Fails("state", "expected one of present, absent, got boolean false"),
    ),
    # absolute_path
    Case("path", {"p": "/etc/motd"}, lambda r: r.absolute_path("p"), "/etc/motd"),
    Case("path normalised", {"p": "//etc/./x//"}, lambda r: r.absolute_path("p"), "/etc/x"),
    Case("path required", {}, lambda r: r.absolute_path("p"), Fails("p", "required")),
    Case("path relative", {"p": "etc/x"}, lambda r: r.absolute_path("p"), Fails("p", "absolute")),
    Case("path dotdot", {"p": "/etc/../x"}, lambda r: r.absolute_path("p"), Fails("p", "'..'")),
    Case("path root", {"p": "/"}, lambda r: r.absolute_path("p"), Fails("p", "below '/'")),
    Case("path NUL", {"p": "/a\0b"}, lambda r: r.absolute_path("p"), Fails("p", "NUL")),
    # octal_mode
    Case("mode 4 digits", {"mode": "0644"}, lambda r: r.octal_mode("mode"), 0o644),
    Case("mode 3 digits", {"mode": "755"}, lambda r: r.octal_mode("mode"), 0o755),
    Case("mode sticky", {"mode": "1777"}, lambda r: r.octal_mode("mode"), 0o1777),
    Case("mode not given", {}, lambda r: r.octal_mode("mode"), None),
    Case(
        "mode unquoted 0644",
        {"mode": 420},
        lambda r: r.octal_mode("mode"),
        Fails("mode", 'got integer 420 (quote it, e.g. mode: "0644"'),
    ),
    Case(
        "mode not octal", {"mode": "0648"}, lambda r: r.octal_mode("mode"), Fails("mode", "octal")
    ),
    Case(
        "mode too long", {"mode": "10644"}, lambda r: r.octal_mode("mode"), Fails("mode", "3 or 4")
    ),
    Case("mode symbolic", {"mode": "u+x"}, lambda r: r.octal_mode("mode"), Fails("mode", "'u+x'")),
    # nesting and dotted field paths
    Case("nested", {"inner": {"a": "x"}}, _inner, "x"),
    Case(
        "nested wrong type",
        {"inner": {"a": 1}},
        _inner,
        Fails("inner.a", "expected a string, got integer 1"),
    ),
    Case("nested not a mapping", {"inner": [1]}, _inner, Fails("inner", "got a list")),
    Case("nested unknown", {"inner": {"a": "x", "b": 1}}, _inner, Fails("inner.b", "unknown")),
    Case("list of mappings", {"rules": [{"dport": 22}, {"dport": 80}]}, _nested, [22, 80]),
    Case("list not given", {}, _nested, []),
    Case(
        "list item field",
        {"rules": [{"dport": 22}, {"dport": "http"}]},
        _nested,
        Fails("rules.1.dport", "expected an integer, got string 'http'"),
    ),
    Case("list item missing", {"rules": [{}]}, _nested, Fails("rules.0.dport", "required")),
    Case("list item not mapping", {"rules": ["x"]}, _nested, Fails("rules.0", "a mapping")),
    Case("list not a list", {"rules": {"dport": 1}}, _nested, Fails("rules", "a list of mappings")),
    # finish: leftovers
    Case(
        "unknown field",
        {"a": "x", "contnet": "y"},
        lambda r: r.string("a"),
        Fails("contnet", "unknown field 'contnet' (allowed: a)"),
    ),
    Case(
        "unknown fields",
        {"zz": 1, "yy": 2},
        lambda r: (r.string("b"), r.string("a")),
        Fails("yy", "unknown fields 'yy', 'zz' (allowed: a, b)"),
    ),
    Case("unknown non-string key", {1: "x"}, lambda r: None, Fails("1", "(allowed: none)")),
    # the whole spec
    Case("spec not a mapping", ["a"], lambda r: None, Fails("", "expected a mapping, got a list")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_reader(case: Case) -> None:
    def run() -> object:
        reader = SpecReader(case.raw)
        value = case.read(reader)
        reader.finish()
        return value

    if isinstance(case.expected, Fails):
        with pytest.raises(SpecError) as caught:
            run()
        assert caught.value.field == case.expected.field
        assert case.expected.fragment in caught.value.message
    else:
        assert run() == case.expected


def test_error_message_names_the_field() -> None:
    with pytest.raises(SpecError, match=r"^mode: expected a string"):
        SpecReader({"mode": 644}).string("mode")


@pytest.mark.parametrize(
    ("value", "described"),
    [
        (None, "null"),
        (False, "boolean false"),
        (644, "integer 644"),
        ("x" * 100, "string 'xxxxxxx"),
        ({"a": 1}, "a mapping"),
        ([1], "a list"),
    ],
)
def test_describe(value: object, described: str) -> None:
    assert describe(value).startswith(described)
    assert len(describe(value)) < 60
