"""The shared runner for table-driven parse cases of every kind (pyinfra-style data cases)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from modules.base import Kind
from modules.errors import SpecError


@dataclasses.dataclass(frozen=True)
class Fails:
    """The expected SpecError: which field, and a fragment of its message."""

    field: str
    fragment: str


def check_parse(kind: Kind[Any, Any], raw: Any, expected: object) -> None:
    """``kind.parse(raw)`` gives ``expected``, or fails as ``expected`` (a Fails) says."""
    if isinstance(expected, Fails):
        with pytest.raises(SpecError) as caught:
            kind.parse(raw)
        assert caught.value.field == expected.field
        assert expected.fragment in caught.value.message
    else:
        assert kind.parse(raw) == expected
