"""Kinds by name.

Built-in kinds are imported on first use, so a process loads only the kinds
its catalog needs (the agent's footprint matters). A kind module calls
:func:`register` at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

from modules.base import Kind
from modules.errors import SpecError

# kind name -> module that registers it. One kind per file.
BUILTIN: dict[str, str] = {
    "file": "modules.file",
    "firewall": "modules.firewall",
    "package": "modules.package",
    "route": "modules.route",
    "service": "modules.service",
}

_registered: dict[str, Kind[Any, Any]] = {}


def register(kind: Kind[Any, Any]) -> Kind[Any, Any]:
    """Add a kind; refuses an empty or duplicate name."""
    if not kind.name:
        raise ValueError(f"{type(kind).__name__} has an empty kind name")
    if kind.name in _registered:
        raise ValueError(f"kind {kind.name!r} is already registered")
    _registered[kind.name] = kind
    return kind


def get(name: str) -> Kind[Any, Any]:
    """The kind called ``name``; SpecError naming the known kinds if there is none."""
    if name not in _registered and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    try:
        return _registered[name]
    except KeyError:
        known = ", ".join(sorted(set(BUILTIN) | set(_registered)))
        raise SpecError("kind", f"unknown kind {name!r} (known kinds: {known})") from None


def names() -> list[str]:
    """Every kind name that :func:`get` can resolve."""
    return sorted(set(BUILTIN) | set(_registered))
