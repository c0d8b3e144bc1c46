"""The manifest loader, fuzzed: any text at all is a manifest or a list of clear errors.

Whatever it is fed — arbitrary text, YAML of any shape, manifests with the
right keys and wrong values — ``server.manifest.load`` returns a manifest or
raises ManifestInvalid, every error placed at a line with a message; never
another exception, never a traceback for an operator to read.
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.errors import ManifestInvalid
from server.manifest import load

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["file", "package", "service", "route", "firewall", "/etc/motd", "0644"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    ["kind", "name", "spec", "require", "notify", "subscribe", "controls", "timeout", "sensitive"]
)
resource = st.dictionaries(keys, values, max_size=8)
manifest = st.fixed_dictionaries(
    {},
    optional={
        "name": values,
        "target": st.dictionaries(st.sampled_from(["labels", "names", "all"]), values) | values,
        "mode": st.sampled_from(["enforce", "audit"]) | values,
        "resources": st.lists(resource, max_size=5) | values,
    },
)


def loads_or_explains(text: str) -> None:
    try:
        load("fuzz.yaml", text)
    except ManifestInvalid as exc:
        assert exc.errors, "refused without saying why"
        for error in exc.errors:
            assert error.file == "fuzz.yaml"
            assert isinstance(error.line, int) and error.line >= 0
            assert error.message.strip()


@FUZZ
@given(st.text(max_size=2000))
def test_any_text(text: str) -> None:
    loads_or_explains(text)


@FUZZ
@given(values)
def test_any_yaml(document: Any) -> None:
    loads_or_explains(yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(manifest)
def test_manifests_with_the_right_keys_and_any_values(document: dict[str, Any]) -> None:
    loads_or_explains(yaml.safe_dump(document, allow_unicode=True))
