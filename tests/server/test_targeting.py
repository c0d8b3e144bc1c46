"""Selectors over node names, labels and facts (server/targeting.py)."""

from __future__ import annotations

import pytest

from server.targeting import SelectorError, Subject, label_problem, parse, reserved_label

WEB = Subject(
    "web-1",
    {"role": "web", "env": "staging"},
    {"os.family": "debian", "arch": "x86_64", "addresses": "192.0.2.10, 2001:db8::10"},
)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("role=web", True),
        ("role==web", True),
        ("role=db", False),
        ("env!=prod", True),
        ("env!=staging", False),
        ("missing!=x", True),  # not set is not equal
        ("role=web,os.family=debian,env!=prod", True),
        ("role=web,os.family=rhel", False),
        ("name in (db-1,web-1)", True),
        ("name in (db-1, db-2)", False),
        ("os.family notin (rhel,suse)", True),
        ("os.family notin (debian)", False),
        ("role", True),
        ("!role", False),
        ("!decommissioning", True),
        ("addresses=192.0.2.10", True),  # a list fact: any one of its values
        ("addresses=2001:db8::10", True),
        ("addresses=192.0.2.11", False),
        ("os=debian", False),  # a fact the agent did not report is not set
        ("!os", True),
    ],
)
def test_a_selector_selects_by_name_label_and_fact(selector: str, expected: bool) -> None:
    assert parse(selector).matches(WEB) is expected


def test_a_key_that_is_not_a_fact_is_a_label_never_a_claimed_fact() -> None:
    # An agent could claim any fact; only the documented ones ever select.
    claims = Subject("x", {}, {"role": "db"})
    assert parse("role=db").matches(claims) is False
    assert parse("role=db").matches(Subject("x", {"role": "db"}, {})) is True


@pytest.mark.parametrize(
    "text", ["", "role=web,", "role in web", "=web", "role=web,,env=x", "role = (a)"]
)
def test_a_selector_that_does_not_parse_is_refused_naming_the_column(text: str) -> None:
    with pytest.raises(SelectorError, match="expected"):
        parse(text)


def test_a_selector_prints_back_as_it_parses() -> None:
    text = "role=web,env!=prod,name in (a,b),!x,y"
    assert str(parse(str(parse(text)))) == str(parse(text))


def test_labels_cannot_take_the_name_of_a_fact_or_name() -> None:
    assert reserved_label("os.family") and reserved_label("name") and reserved_label("all")
    assert reserved_label("role") is None


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("role", "web", None),
        ("team/owner", "a.b-c_d:1@x+y", None),
        ("role", "", None),  # role= selects it
        ("role", "two words", "a value is up to 63"),
        ("-role", "web", "label key '-role'"),
        ("r" * 64, "web", "label key"),
        ("role", "w" * 64, "a value is up to 63"),
        ("arch", "arm", "is a node's fact"),
        ("all", "yes", "'target: all' selects every node"),
    ],
)
def test_a_label_a_selector_could_not_name_is_refused(
    key: str, value: str, problem: str | None
) -> None:
    found = label_problem(key, value)
    assert (found is None) if problem is None else (found is not None and problem in found)
    if problem is None:  # and what can be set, a selector selects
        assert parse(f"{key}={value}").matches(Subject("n", {key: value}))
