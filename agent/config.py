"""The agent's settings file, ``/etc/plumb/agent.toml`` by default.

Every setting has a command-line flag of the same name that overrides it, so
the file holds what an operator wants on every start (the packaged systemd
unit runs a bare ``plumb-agent daemon``) and a flag what one invocation needs.
The file is optional: a missing default file means built-in defaults; a file
named with ``--config`` or ``$PLUMB_AGENT_CONFIG`` must exist. Unknown
settings and wrong types are refused with the file, the setting and what was
expected, because a typo silently ignored is a setting silently not applied.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.flapping import DEFAULT_BACKOFF_S, DEFAULT_MAX_REPAIRS, DEFAULT_WINDOW_S

DEFAULT_PATH = Path("/etc/plumb/agent.toml")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    #: Identity, cached catalog and report spool.
    state_dir: Path = Path("/var/lib/plumb")
    #: Seconds between periodic runs, and the random delay added to each.
    interval: float = 1800.0
    splay: float = 60.0
    #: Watch managed resources (inotify, netlink, ...) for event-driven drift repair.
    watch: bool = True
    #: After a risky change, seconds to wait for the server before reverting it.
    confirm_timeout: float = 5.0
    #: ``debug``, ``info``, ``warning`` or ``error``.
    log_level: str = "info"
    #: A resource repaired more than ``flap_repairs`` times within ``flap_window``
    #: seconds is flapping: held (reported failed) for ``flap_backoff`` seconds.
    #: ``flap_repairs = 0`` turns the check off (agent/flapping.py).
    flap_repairs: int = DEFAULT_MAX_REPAIRS
    flap_window: float = DEFAULT_WINDOW_S
    flap_backoff: float = DEFAULT_BACKOFF_S


_LOG_LEVELS = ("debug", "info", "warning", "error")
# What each setting must be in TOML, and how to say so.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "state_dir": ((str,), "a path string"),
    "interval": ((int, float), "a number of seconds"),
    "splay": ((int, float), "a number of seconds"),
    "watch": ((bool,), "true or false"),
    "confirm_timeout": ((int, float), "a number of seconds"),
    "log_level": ((str,), "one of " + ", ".join(_LOG_LEVELS)),
    "flap_repairs": ((int,), "a whole number of repairs"),
    "flap_window": ((int, float), "a number of seconds"),
    "flap_backoff": ((int, float), "a number of seconds"),
}


def config_path(explicit: Path | None) -> tuple[Path, bool]:
    """The file to read, and whether it must exist (it was asked for by name)."""
    if explicit is not None:
        return explicit, True
    from_env = os.environ.get("PLUMB_AGENT_CONFIG")
    if from_env:
        return Path(from_env), True
    return DEFAULT_PATH, False


def load(path: Path, *, required: bool) -> AgentConfig:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file") from None
        return AgentConfig()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message names the line and column
        raise ConfigError(f"{path}: {exc}") from exc
    return AgentConfig(**{name: _value(path, name, value) for name, value in raw.items()})


def _value(path: Path, name: str, value: Any) -> Any:
    if name not in _TYPES:
        known = ", ".join(_TYPES)
        raise ConfigError(f"{path}: unknown setting {name!r} (known: {known})")
    types, expected = _TYPES[name]
    # bool is an int in Python; `interval = true` is still a mistake.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ConfigError(f"{path}: {name} must be {expected}, got {value!r}")
    if name == "state_dir":
        return Path(str(value))
    if name == "log_level" and value not in _LOG_LEVELS:
        raise ConfigError(f"{path}: {name} must be {expected}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{path}: {name} must not be negative, got {value!r}")
        return value if float not in types else float(value)
    return value
