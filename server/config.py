"""The server's configuration, kept as ``<data>/server.toml`` by ``plumb-server init``."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from server.errors import ConfigError

CONFIG_NAME = "server.toml"


@dataclasses.dataclass
class ServerConfig:
    data_dir: Path
    # Agents' sessions and the operator CLI (mutual TLS).
    listen: str = "0.0.0.0:8443"
    # Enrollment only (server-authenticated TLS: a new node has no certificate yet).
    enroll_listen: str = "0.0.0.0:8444"
    # The host name or address agents and the CLI use to reach this server.
    advertise: str = "localhost"
    # SQLAlchemy URL; empty means the embedded SQLite file in the data dir.
    # Only SQLite is supported yet: server/store.py (store_path) refuses others.
    store_url: str = ""
    # Caps on what `plumb token create` may ask for: a token lives at most this
    # many seconds (default 7 days) and enrolls at most this many nodes. A
    # token is a credential; one that outlives its purpose is one to steal.
    token_max_ttl_s: int = 7 * 24 * 3600
    token_max_uses: int = 1000
    # Lifetimes of the certificates the CA issues to nodes and operators, in
    # seconds (default 90 days). Each is renewed in its last third: an agent
    # by itself over its session, an operator with 'plumb operator renew'
    # (which every plumb command suggests once it is due).
    node_cert_ttl_s: int = 90 * 24 * 3600
    operator_cert_ttl_s: int = 90 * 24 * 3600
    # A node whose agent runs by itself every T seconds and has sent no run
    # report for this many times T is "no report": its catalog counts as
    # unknown, never as compliant (plumb nodes, plumb compliance).
    no_report_after_runs: int = 3
    # HOST:PORT of the Prometheus endpoint (server/metrics.py); empty: none.
    # Plain HTTP: keep it on loopback or a management network.
    metrics_listen: str = ""

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'plumb.db'}"

    def save(self) -> None:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "data_dir"}
        # Flat strings and integers only, so JSON's spelling is valid TOML.
        text = "".join(
            f"{k} = {json.dumps(v if isinstance(v, int) else str(v))}\n" for k, v in fields.items()
        )
        (self.data_dir / CONFIG_NAME).write_text(
            "# Written by plumb-server init; edit and restart plumb-server.\n" + text
        )

    @classmethod
    def load(cls, data_dir: Path) -> ServerConfig:
        path = data_dir / CONFIG_NAME
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} not found: run 'plumb-server init' first") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        known = {f.name: f for f in dataclasses.fields(cls)}
        known.pop("data_dir")
        unknown = set(raw) - set(known)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {k: _value(path, known[k], v) for k, v in raw.items()}
        return cls(data_dir=data_dir, **values)


def _value(path: Path, field: dataclasses.Field[object], value: object) -> object:
    """A setting as its field's type wants it: a string, or a positive integer."""
    # Annotations are strings here (from __future__ import annotations).
    if field.type not in ("int", int):
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{path}: {field.name} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{path}: {field.name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{path}: {field.name} must be at least 1, got {number}")
    return number
