"""The registry: exactly the kinds in modules/, each under its own name, no duplicates."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import modules
from modules import registry
from modules.base import Kind
from modules.errors import SpecError

MODULES = Path(modules.__file__).parent


def kind_files() -> dict[str, str]:
    """Kind name -> module, for every file in modules/ that defines a registered kind.

    Read from the source, not from the registry: a kind file the registry
    forgot must fail this test, not be invisible to it.
    """
    found: dict[str, str] = {}
    for path in sorted(MODULES.glob("*.py")):
        tree = ast.parse(path.read_text())
        registers = any(
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "register"
            for node in ast.walk(tree)
        )
        names = [
            stmt.value.value
            for cls in tree.body
            if isinstance(cls, ast.ClassDef)
            and any(ast.unparse(base).startswith("Kind[") for base in cls.bases)
            for stmt in cls.body
            if isinstance(stmt, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "name" for t in stmt.targets)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ]
        if registers and path.name != "registry.py":
            for name in names:
                found[name] = f"modules.{path.stem}"
    return found


def test_the_registry_lists_exactly_the_kinds_in_modules() -> None:
    assert kind_files() == registry.BUILTIN
    assert registry.names() == sorted(registry.BUILTIN)
    for name, module in registry.BUILTIN.items():
        kind = registry.get(name)
        assert isinstance(kind, Kind)
        assert (kind.name, type(kind).__module__) == (name, module)


def test_an_unknown_kind_is_a_spec_error_naming_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown kind 'nope' \(known kinds: file, firewall"):
        registry.get("nope")


def test_a_duplicate_or_empty_kind_name_is_refused() -> None:
    existing = registry.get("file")
    with pytest.raises(ValueError, match="kind 'file' is already registered"):
        registry.register(type(existing)())
    assert registry.get("file") is existing

    class Nameless(type(existing)):  # type: ignore[misc]
        name = ""

    with pytest.raises(ValueError, match="Nameless has an empty kind name"):
        registry.register(Nameless())


MINIMAL = {
    "file": {"path": "/etc/motd"},
    "package": {"package": "nginx"},
    "service": {"unit": "web"},
    "route": {"destination": "198.51.100.0/24", "gateway": "192.0.2.1"},
    "firewall": {"table": "plumb"},
}


@pytest.mark.parametrize("name", sorted(registry.BUILTIN))
def test_an_unknown_field_lists_every_declared_field(name: str) -> None:
    kind = registry.get(name)
    declared = ", ".join(sorted(f.name for f in kind.fields))
    kind.parse(MINIMAL[name])  # the minimal spec is valid
    with pytest.raises(SpecError) as refused:
        kind.parse({**MINIMAL[name], "colour": "blue"})
    assert refused.value.field == "colour"
    assert refused.value.message == f"unknown field 'colour' (allowed: {declared})"
    assert all(f.doc for f in kind.fields)
    assert [f.name for f in kind.fields if f.required] == list(MINIMAL[name])[:1]


def test_the_service_kind_lists_enabled_even_when_it_is_not_given() -> None:
    with pytest.raises(SpecError, match=r"allowed: content, enabled, state, unit\)"):
        registry.get("service").parse({"unit": "web", "enable": True})
