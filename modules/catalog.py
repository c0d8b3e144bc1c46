"""The compiled catalog: what one node must look like at one revision.

The server compiles it from manifests (``server/compiler.py``), signs its JSON
form and sends it; the agent verifies, caches and runs it
(``agent/engine.py``). It is plain data shared by both sides, which is why it
lives here and not in either of them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from modules.base import Mode


@dataclasses.dataclass(frozen=True)
class CatalogResource:
    """One resource as the agent runs it."""

    kind: str
    name: str
    spec: Mapping[str, Any]
    manifest: str = ""  # the manifest that declared it, for reports and compliance
    mode: Mode = Mode.ENFORCE
    require: tuple[str, ...] = ()  # ids ("kind/name") that must be handled first
    controls: tuple[str, ...] = ()  # compliance tags, e.g. "CIS-1.1.1"
    #: Ids this resource is refreshed after, when one of them was changed in the
    #: same run (JSON ``"subscribe"``). They are ordered and block it exactly like
    #: ``require``. The compiler merges both manifest directions into it: the
    #: resource's own ``subscribe`` entries first, then every resource whose
    #: ``notify`` names it, in catalog order, without repeats; a catalog never
    #: carries ``notify``. Absent in older catalogs, which means empty.
    subscribe: tuple[str, ...] = ()
    #: Seconds the engine gives this resource (JSON ``"timeout"``), instead of
    #: its kind's ``timeout_s``. None, and absent from the JSON, in older
    #: catalogs and whenever the manifest sets none: the kind's default.
    timeout_s: float | None = None
    #: Its values are secrets (JSON ``"sensitive": true``): the engine shows
    #: "(sensitive)" for every value in its changes, log lines and reports.
    sensitive: bool = False

    @property
    def id(self) -> str:
        return resource_id(self.kind, self.name)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "spec": dict(self.spec),
            "manifest": self.manifest,
            "mode": str(self.mode),
            "require": list(self.require),
            "controls": list(self.controls),
            "subscribe": list(self.subscribe),
        }
        if self.timeout_s is not None:
            # Only when set: a catalog without timeouts is byte for byte what
            # it was before the field existed, signature included.
            body["timeout"] = self.timeout_s
        if self.sensitive:
            body["sensitive"] = True
        return body

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CatalogResource:
        return cls(
            kind=str(raw["kind"]),
            name=str(raw["name"]),
            spec=dict(raw["spec"]),
            manifest=str(raw.get("manifest", "")),
            mode=Mode(raw.get("mode", Mode.ENFORCE)),
            require=tuple(raw.get("require", ())),
            controls=tuple(raw.get("controls", ())),
            subscribe=tuple(raw.get("subscribe", ())),
            timeout_s=_timeout(raw.get("timeout")),
            sensitive=raw.get("sensitive", False) is True,
        )


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Every resource one node must have at one revision."""

    node: str
    revision: int
    resources: tuple[CatalogResource, ...] = ()

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces, UTF-8): the bytes that get signed.

        UTF-8 rather than ASCII escapes: text in other scripts would otherwise
        take six bytes a character (``\\u0436``), tripling a catalog's size.
        """
        body = {
            "node": self.node,
            "revision": self.revision,
            "resources": [r.to_dict() for r in self.resources],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Catalog:
        raw = json.loads(data)
        return cls(
            node=str(raw["node"]),
            revision=int(raw["revision"]),
            resources=tuple(CatalogResource.from_dict(r) for r in raw["resources"]),
        )


def _timeout(value: Any) -> float | None:
    """A catalog's ``timeout``: a positive number of seconds, kept as written (120 stays 120)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {value!r}")
    return value


def resource_id(kind: str, name: str) -> str:
    """The id manifests use in ``require``: ``kind/name``."""
    return f"{kind}/{name}"
