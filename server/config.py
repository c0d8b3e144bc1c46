"""The server's configuration, kept as ``<data>/server.toml`` by ``plumb-server init``."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

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

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'plumb.db'}"

    def save(self) -> None:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "data_dir"}
        # Flat string values only, so JSON string quoting is valid TOML.
        text = "".join(f"{k} = {json.dumps(str(v))}\n" for k, v in fields.items())
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
        known = {f.name for f in dataclasses.fields(cls)} - {"data_dir"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
        return cls(data_dir=data_dir, **{k: str(v) for k, v in raw.items()})
