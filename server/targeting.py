"""Which nodes a manifest, a plan or a listing is about: selectors over names, labels and facts.

A selector is a comma-separated list of requirements, all of which must
hold (the syntax of Kubernetes' label selectors, which operators know)::

    role=web                    equal (== works too)
    env!=prod                   not equal (true when env is not set at all)
    name in (db-1,db-2)         one of
    os.family notin (rhel)      none of (true when not set)
    role                        set, to anything
    !decommissioning            not set

A key is looked up as: ``name``, the node's name; one of the facts of
:mod:`protos.facts` (``os.family``, ``arch``, ``virtualization``, ...), what
the node's agent last said in its hello; anything else, one of the node's
labels, which only the server assigns. ``addresses`` holds several values:
a requirement on it holds if it holds for any one of them.

Facts are what the agent says about its host: a manifest that must reach
only the hosts the server vouches for targets by name or label.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping

from protos.facts import FACT_KEYS, LIST_FACTS

NAME_KEY = "name"
#: ``target: all`` selects every node, so no label is called that.
ALL = "all"


@dataclasses.dataclass(frozen=True)
class Subject:
    """A node as targeting sees it."""

    name: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    facts: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def values(self, key: str) -> tuple[str, ...] | None:
        """What ``key`` is on this node (several values for a list fact); None: not set."""
        if key == NAME_KEY:
            return (self.name,)
        if key in FACT_KEYS:
            found = self.facts.get(key)
            if not found:  # '' is what an agent says when it could not tell
                return None
            return tuple(v.strip() for v in found.split(",")) if key in LIST_FACTS else (found,)
        label = self.labels.get(key)
        return None if label is None else (label,)


class Op(enum.StrEnum):
    EQ = "="
    NE = "!="
    IN = "in"
    NOTIN = "notin"
    EXISTS = "exists"
    ABSENT = "!"


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def holds(self, subject: Subject) -> bool:
        found = subject.values(self.key)
        if self.op is Op.EXISTS:
            return found is not None
        if self.op is Op.ABSENT:
            return found is None
        hit = found is not None and any(v in self.values for v in found)
        return hit if self.op in (Op.EQ, Op.IN) else not hit

    def __str__(self) -> str:
        values = ",".join(sorted(self.values))
        match self.op:
            case Op.EXISTS:
                return self.key
            case Op.ABSENT:
                return f"!{self.key}"
            case Op.IN | Op.NOTIN:
                return f"{self.key} {self.op} ({values})"
            case _:
                return f"{self.key}{self.op}{values}"


class SelectorError(ValueError):
    """A selector that does not parse; the message says where and what was expected."""


@dataclasses.dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, subject: Subject) -> bool:
        return all(r.holds(subject) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_KEY = r"[A-Za-z0-9](?:[A-Za-z0-9_./-]*[A-Za-z0-9])?"
_VALUE = r"[A-Za-z0-9_./:@+-]*"
_SET = rf"\(\s*(?P<set>{_VALUE}(?:\s*,\s*{_VALUE})*)\s*\)"
_REQUIREMENT = re.compile(
    rf"\s*(?:"
    rf"(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})"
    rf"|(?P<skey>{_KEY})\s+(?P<sop>in|notin)\s*{_SET}"
    rf"|!\s*(?P<absent>{_KEY})"
    rf"|(?P<exists>{_KEY})"
    rf")\s*(?P<end>,|$)"
)
_EXPECTED = "key=value, key!=value, key in (a,b), key notin (a,b), key or !key"


def parse(text: str) -> Selector:
    """The selector ``text`` says; SelectorError naming the column and what was expected."""
    requirements: list[Requirement] = []
    at = 0
    if not text.strip():
        raise SelectorError(f"an empty selector selects nothing: expected {_EXPECTED}")
    while at < len(text):
        found = _REQUIREMENT.match(text, at)
        if found is None or (found.group("end") == "," and found.end() == len(text)):
            raise SelectorError(
                f"selector {text!r}: cannot read it at column {at + 1}: expected {_EXPECTED}"
            )
        requirements.append(_requirement(found))
        at = found.end()
    return Selector(tuple(requirements))


def _requirement(found: re.Match[str]) -> Requirement:
    if found.group("key"):
        op = Op.NE if found.group("op") == "!=" else Op.EQ
        return Requirement(found.group("key"), op, frozenset({found.group("value")}))
    if found.group("skey"):
        values = frozenset(v.strip() for v in found.group("set").split(","))
        return Requirement(found.group("skey"), Op(found.group("sop")), values)
    if found.group("absent"):
        return Requirement(found.group("absent"), Op.ABSENT)
    return Requirement(found.group("exists"), Op.EXISTS)


def reserved_label(key: str) -> str | None:
    """Why a label cannot be called ``key`` (it would read as a name or a fact); None: it can."""
    if key == ALL:
        return f"label {key!r}: 'target: all' selects every node; choose another label name"
    if key == NAME_KEY or key in FACT_KEYS:
        return (
            f"label {key!r}: {key} is a node's "
            + ("name" if key == NAME_KEY else "fact (what its agent reports)")
            + " in a target; choose another label name"
        )
    return None


#: The most a label key or value may hold (Kubernetes' limit on a label's name part).
MAX_LABEL_CHARS = 63


def label_problem(key: str, value: str) -> str | None:
    """Why label ``key=value`` cannot be set on a node; None: it can.

    A label a selector could not name (``role=web`` written any other way)
    could never select the node, so the key and the value take exactly what
    selectors read.
    """
    if not re.fullmatch(_KEY, key) or len(key) > MAX_LABEL_CHARS:
        return (
            f"label key {key!r}: expected up to {MAX_LABEL_CHARS} letters, digits and _ . / -, "
            "starting and ending with a letter or digit"
        )
    if not re.fullmatch(_VALUE, value) or len(value) > MAX_LABEL_CHARS:
        return (
            f"label {key}={value!r}: a value is up to {MAX_LABEL_CHARS} letters, digits "
            "and _ . / : @ + -"
        )
    return reserved_label(key)
