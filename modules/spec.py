"""Helpers that turn a raw spec mapping (straight from YAML) into typed values.

A kind's ``parse`` wraps the raw mapping in a :class:`SpecReader`, asks for
each field by name and type, and calls :meth:`SpecReader.finish` last::

    reader = SpecReader(raw)
    path = reader.absolute_path("path")
    state = reader.choice("state", Presence, default=Presence.PRESENT)
    content = reader.string("content")            # None when not given
    reader.finish()                               # refuses fields nobody asked for

A kind declares its fields once, as :class:`Field` values in its ``fields``
class attribute, and hands them to the reader (``SpecReader(raw,
self.fields)``): the reader then refuses to be asked for a field that is not
declared (a bug in the kind), and the "allowed:" list of an unknown-field
error is the declaration itself, so it cannot leave out a field the kind
reads only sometimes.

Every problem is a :class:`~modules.errors.SpecError` whose ``field`` is the
dotted path of the offending value (``"mode"``, ``"rules.0.dport"``), so the
manifest loader can point at its YAML line. The reader is strict on purpose:
YAML turns ``yes`` into ``True`` and ``0644`` into ``420``, so a value of the
wrong type is refused with what was expected and what was given, never
coerced. An explicit ``null`` is a wrong type too, not "not given".
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

from modules.errors import SpecError

E = TypeVar("E", bound=enum.Enum)


class Presence(enum.StrEnum):
    """The usual ``state:`` of a resource: whether the thing should exist."""

    PRESENT = "present"
    ABSENT = "absent"


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a kind's spec, declared once (as Puppet's Resource API does)."""

    name: str
    doc: str  # one line: what it takes and what it does
    required: bool = False


class SpecReader:
    """Typed, field-by-field access to one raw spec mapping (or a nested one)."""

    def __init__(self, raw: object, fields: Sequence[Field] = (), path: str = "") -> None:
        """``fields``: the kind's declaration; empty for nested mappings (their fields are
        the ones asked for)."""
        if not isinstance(raw, Mapping):
            raise SpecError(path, f"expected a mapping, got {describe(raw)}")
        self._raw: Mapping[Any, Any] = raw
        self._path = path
        self._declared = {f.name for f in fields}
        self._asked: set[str] = set()  # every field a kind asked for
        self._children: list[SpecReader] = []

    def field(self, name: str) -> str:
        """The dotted path of ``name`` for error messages (``"rules.0.dport"``)."""
        return f"{self._path}.{name}" if self._path else name

    def error(self, name: str, message: str) -> SpecError:
        """A SpecError about field ``name``, for checks a kind makes itself."""
        return SpecError(self.field(name), message)

    @overload
    def string(self, name: str, *, required: Literal[True], hint: str = "") -> str: ...
    @overload
    def string(self, name: str, *, default: str, hint: str = "") -> str: ...
    @overload
    def string(self, name: str, *, hint: str = "") -> str | None: ...
    def string(
        self, name: str, *, required: bool = False, default: str | None = None, hint: str = ""
    ) -> str | None:
        """A string field. ``hint`` is added when the value has another type."""
        value = self._take(name, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise self._wrong_type(name, "a string", value, hint)
        return value

    @overload
    def integer(self, name: str, *, required: Literal[True]) -> int: ...
    @overload
    def integer(self, name: str, *, default: int) -> int: ...
    @overload
    def integer(self, name: str) -> int | None: ...
    def integer(
        self, name: str, *, required: bool = False, default: int | None = None
    ) -> int | None:
        """An integer field; ``true`` is not 1 here even though Python says so."""
        value = self._take(name, required)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong_type(name, "an integer", value)
        return value

    def boolean(self, name: str, *, default: bool = False) -> bool:
        """A boolean field. Safe defaults are the zero value, hence ``False``."""
        value = self._take(name, required=False)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self._wrong_type(name, "a boolean (true or false)", value)
        return value

    def optional_boolean(self, name: str) -> bool | None:
        """A boolean field where "not given" means "not managed": None then."""
        value = self._take(name, required=False)
        if value is _MISSING:
            return None
        if not isinstance(value, bool):
            raise self._wrong_type(name, "a boolean (true or false)", value)
        return value

    def choice(self, name: str, options: type[E], *, default: E) -> E:
        """A string that must be the value of one member of the enum ``options``."""
        value = self._take(name, required=False)
        if value is _MISSING:
            return default
        for member in options:
            if isinstance(value, str) and member.value == value:
                return member
        allowed = ", ".join(str(member.value) for member in options)
        raise self.error(name, f"expected one of {allowed}, got {describe(value)}")

    def mapping(self, name: str) -> SpecReader | None:
        """A nested mapping, read with its own reader; None when not given."""
        value = self._take(name, required=False)
        if value is _MISSING:
            return None
        return self._child(value, self.field(name))

    def mappings(self, name: str) -> list[SpecReader]:
        """A list of mappings (``rules: [{...}, ...]``), one reader each; [] when not given."""
        value = self._take(name, required=False)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            raise self._wrong_type(name, "a list of mappings", value)
        return [self._child(item, f"{self.field(name)}.{i}") for i, item in enumerate(value)]

    def absolute_path(self, name: str) -> str:
        """A required absolute POSIX path, normalised (``/etc//x/.`` is ``/etc/x``).

        ``..`` is refused rather than resolved: it would let a spec climb out
        of the context's root, and its meaning changes with symlinks.
        """
        text = self.string(name, required=True)
        if not text.startswith("/"):
            raise self.error(name, f"expected an absolute path, got {text!r}")
        if "\0" in text:
            raise self.error(name, "a path cannot contain a NUL character")
        parts = [part for part in text.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.error(name, f"'..' is not allowed in a path, got {text!r}")
        if not parts:
            raise self.error(name, "expected a path below '/', got '/'")
        return "/" + "/".join(parts)

    def octal_mode(self, name: str) -> int | None:
        """Optional permission bits written as a quoted octal string: ``"0644"``, ``"644"``.

        A YAML number is refused because YAML has already changed it:
        unquoted ``0644`` arrives as 420 and ``644`` as decimal 644.
        """
        hint = f'quote it, e.g. {name}: "0644"; unquoted, YAML reads 0644 as the number 420'
        text = self.string(name, hint=hint)
        if text is None:
            return None
        if not _OCTAL_MODE.fullmatch(text):
            raise self.error(name, f'expected 3 or 4 octal digits such as "0644", got {text!r}')
        return int(text, 8)

    def finish(self) -> None:
        """Refuse any field nobody asked for, here and in nested readers.

        Call it after reading every field: an unknown field is usually a
        typo (``contnet``), and ignoring it would silently drop intent.
        """
        allowed_names = self._declared or self._asked
        unknown = sorted(str(key) for key in self._raw if key not in allowed_names)
        if unknown:
            allowed = ", ".join(sorted(allowed_names)) or "none"
            names = ", ".join(repr(key) for key in unknown)
            noun = "field" if len(unknown) == 1 else "fields"
            raise self.error(unknown[0], f"unknown {noun} {names} (allowed: {allowed})")
        for child in self._children:
            child.finish()

    def _take(self, name: str, required: bool) -> object:
        """The raw value of ``name``, or _MISSING; records ``name`` as allowed."""
        if self._declared and name not in self._declared:
            raise ValueError(f"field {name!r} is read but not declared in the kind's fields")
        self._asked.add(name)
        if name in self._raw:
            return self._raw[name]
        if required:
            raise self.error(name, "required field is missing")
        return _MISSING

    def _child(self, raw: object, path: str) -> SpecReader:
        child = SpecReader(raw, path=path)
        self._children.append(child)
        return child

    def _wrong_type(self, name: str, expected: str, value: object, hint: str = "") -> SpecError:
        message = f"expected {expected}, got {describe(value)}"
        return self.error(name, f"{message} ({hint})" if hint else message)


def describe(value: object) -> str:
    """A YAML value as a user would name it: ``integer 644``, ``boolean true``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {_shorten(repr(value))}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {_shorten(str(value))}"


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# A unique object, so that "not given" differs from an explicit null.
_MISSING = object()

_OCTAL_MODE = re.compile(r"[0-7]{3,4}")
