"""The ``service`` kind: a systemd unit running or stopped, enabled or not, with its unit file.

Spec::

    kind: service
    name: web
    spec:
      unit: web.service        # ".service" is added to a name without a suffix
      state: running           # or stopped; omitted: not managed
      enabled: true            # omitted: not managed
      content: |               # optional: /etc/systemd/system/<unit>, managed with it
        [Service]
        ExecStart=/usr/bin/web
    notify/subscribe: a subscribed resource that changed restarts it (see the engine)

Reading and changing go through ``systemctl`` (its messages are the ones an
operator knows); the main process is described with psutil (pid, memory,
uptime) for the report. When the unit file's content changes, systemd is
reloaded and a running unit restarted, because a running unit keeps its old
definition until then. Watching uses systemd's D-Bus signals (jeepney): a unit
stopped, started or disabled behind the agent's back is noticed at once.

A resource gets 90 s by default (``timeout_s``, systemd's own
DefaultTimeoutStartSec): a ``systemctl start`` still waiting then (a oneshot
unit whose ExecStart hangs) is killed and the resource fails "timed out". The
start job it queued stays systemd's: the unit stays ``activating`` until it
finishes or is stopped.

Units are the host's: the kind works on the real root only (``systemctl`` has
no way to start a unit in a sandbox directory) and with systemd running.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modules import file as file_kind
from modules.base import Change, Context, Identity, Kind, Refreshable, Watchable
from modules.errors import ApplyError, OperationError, ReadError, Unavailable
from modules.registry import register
from modules.spec import Field, SpecReader

UNIT_DIRECTORY = "/etc/systemd/system"
# The unit file is written the way the file kind writes any file (atomically,
# never through a symlink); this instance is not registered, only used.
_FILE = file_kind.FileKind()
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]+")
_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
_ACTIVE = ("active", "reloading", "activating")
# systemctl show's properties, in the order read.
_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MainPID",
    "NeedDaemonReload",
)


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    unit: str
    running: bool | None = None  # None: not managed
    enabled: bool | None = None
    content: str | None = None

    @property
    def unit_path(self) -> str:
        return f"{UNIT_DIRECTORY}/{self.unit}"


@dataclasses.dataclass(frozen=True)
class ServiceState:
    load: str  # loaded, not-found, masked, ...
    active: str  # active, inactive, failed, activating, ...
    sub: str  # running, dead, exited, ...
    unit_file: str  # enabled, disabled, static, masked, "" ...
    main_pid: int
    #: The unit file when its content is managed; None otherwise.
    file: file_kind.FileState | None = None

    @property
    def running(self) -> bool:
        return self.active in _ACTIVE

    @property
    def enabled(self) -> bool:
        return self.unit_file in ("enabled", "enabled-runtime", "alias")


class ServiceKind(
    Kind[ServiceSpec, ServiceState], Watchable[ServiceSpec], Refreshable[ServiceSpec]
):
    name = "service"
    # systemd's own default start timeout is 90 s (DefaultTimeoutStartSec).
    timeout_s = 90.0
    fields = (
        Field("unit", 'a systemd unit; ".service" is added to a bare name', required=True),
        Field("state", "running or stopped; not given: not managed"),
        Field("enabled", "true or false; not given: not managed"),
        Field("content", "the unit file under /etc/systemd/system, managed with it"),
    )

    def parse(self, raw: Mapping[str, Any]) -> ServiceSpec:
        reader = SpecReader(raw, self.fields)
        unit = reader.string("unit", required=True)
        if not _UNIT.fullmatch(unit) or unit.startswith("-"):
            raise reader.error("unit", f"not a valid systemd unit name: {unit!r}")
        if not unit.endswith(_SUFFIXES):
            unit += ".service"
        state = reader.string("state")
        if state not in (None, "running", "stopped"):
            raise reader.error("state", f"expected one of running, stopped, got {state!r}")
        enabled = reader.optional_boolean("enabled")
        content = reader.string("content")
        reader.finish()
        return ServiceSpec(unit, None if state is None else state == "running", enabled, content)

    def identities(self, spec: ServiceSpec) -> tuple[Identity, ...]:
        # With content, the unit file is managed too: a file resource on the
        # same path would fight over it.
        unit = (Identity("unit", spec.unit),)
        return unit if spec.content is None else (*unit, *_FILE.identities(_unit_file_spec(spec)))

    def read(self, ctx: Context, spec: ServiceSpec) -> ServiceState:
        _require_systemd(ctx)
        result = _systemctl(
            ctx, ["show", spec.unit, *(f"--property={p}" for p in _PROPERTIES)], ReadError
        )
        values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        unit_file = None
        if spec.content is not None:
            unit_file = _FILE.read(ctx, _unit_file_spec(spec))
        return ServiceState(
            load=values.get("LoadState", ""),
            active=values.get("ActiveState", ""),
            sub=values.get("SubState", ""),
            unit_file=values.get("UnitFileState", ""),
            main_pid=int(values.get("MainPID", "0") or 0),
            file=unit_file,
        )

    def diff(self, spec: ServiceSpec, state: ServiceState) -> list[Change]:
        changes = []
        if spec.content is not None and state.file is not None:
            changes += _FILE.diff(_unit_file_spec(spec), state.file)
            changes = [dataclasses.replace(c, field=f"unit file {c.field}") for c in changes]
        if spec.enabled is not None and spec.enabled != state.enabled:
            changes.append(Change("enabled", state.unit_file or "absent", _yes(spec.enabled)))
        if spec.running is not None and spec.running != state.running:
            wanted = "running" if spec.running else "stopped"
            changes.append(Change("state", f"{state.active} ({state.sub})", wanted))
        return changes

    def apply(
        self, ctx: Context, spec: ServiceSpec, state: ServiceState, changes: list[Change]
    ) -> None:
        fields = {change.field for change in changes}
        new_definition = any(field.startswith("unit file") for field in fields)
        if new_definition and state.file is not None:
            unit_spec = _unit_file_spec(spec)
            _FILE.apply(ctx, unit_spec, state.file, _FILE.diff(unit_spec, state.file))
            _systemctl(ctx, ["daemon-reload"], ApplyError)
        if "enabled" in fields:
            _systemctl(ctx, ["enable" if spec.enabled else "disable", spec.unit], ApplyError)
        if "state" in fields:
            _systemctl(ctx, ["start" if spec.running else "stop", spec.unit], ApplyError)
        elif new_definition and state.running:
            # A running unit keeps its old definition until it is restarted.
            _systemctl(ctx, ["restart", spec.unit], ApplyError)

    def refresh(self, ctx: Context, spec: ServiceSpec, applied: Sequence[Change]) -> Change | None:
        """Restart, because something this service subscribes to changed.

        Not when it is meant to be stopped, and not when this run already
        (re)started it: that process already sees the change.
        """
        if spec.running is False:
            return None
        if any(c.field == "state" or c.field.startswith("unit file") for c in applied):
            return None
        before = self.read(ctx, spec)
        if not before.running and spec.running is None:
            return None  # state not managed and stopped: a restart would start it
        _systemctl(ctx, ["restart", spec.unit], ApplyError)
        return Change("restart", f"pid {before.main_pid or '-'}", "restarted")

    def describe(self, ctx: Context, spec: ServiceSpec, state: ServiceState) -> dict[str, str]:
        """The unit's main process, for the report: pid, memory, uptime."""
        described = {"active": f"{state.active} ({state.sub})"}
        if state.unit_file:  # empty for a unit systemd does not know
            described["unit_file"] = state.unit_file
        if state.main_pid:
            described.update(_process(state.main_pid))
        return described

    def watch(
        self,
        ctx: Context,
        specs: Sequence[ServiceSpec],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """systemd's signals for the managed units (state, unit files) until ``stop`` is set."""
        _require_systemd(ctx)
        _watch_units(ctx, [spec.unit for spec in specs], on_change, stop)


def _unit_file_spec(spec: ServiceSpec) -> file_kind.FileSpec:
    return _FILE.parse(
        {"path": spec.unit_path, "content": spec.content, "mode": "0644", "owner": "root"}
    )


def _yes(value: bool) -> str:
    return "enabled" if value else "disabled"


def _process(pid: int) -> dict[str, str]:
    import psutil

    try:
        process = psutil.Process(pid)
        with process.oneshot():
            rss = process.memory_info().rss
            started = process.create_time()
    except psutil.Error:  # gone between systemctl and here
        return {"main_pid": str(pid)}
    return {
        "main_pid": str(pid),
        "memory_rss": f"{rss / 2**20:.1f} MiB",
        "uptime": f"{max(0.0, time.time() - started):.0f} s",
    }


def _require_systemd(ctx: Context) -> None:
    if ctx.root != Path("/"):
        raise Unavailable(f"services are the host's own, not under {ctx.root}")
    if not os.path.isdir("/run/systemd/system"):
        raise Unavailable("systemd is not running on this host")


def _systemctl(
    ctx: Context, args: list[str], failure: type[OperationError]
) -> subprocess.CompletedProcess[str]:
    result = ctx.run(["systemctl", "--no-ask-password", "--no-pager", *args], failure=failure)
    if result.returncode != 0:
        raise failure(f"systemctl {' '.join(args)} failed", result.stderr or result.stdout)
    return result


# --- watching: systemd's D-Bus signals -------------------------------------------

_SYSTEMD = "org.freedesktop.systemd1"
_MANAGER_PATH = "/org/freedesktop/systemd1"
_RECEIVE_TIMEOUT_S = 0.2  # how often the loop looks at ``stop``


def _watch_units(
    ctx: Context, units: list[str], on_change: Callable[[], None], stop: threading.Event
) -> None:
    """Subscribe to systemd's signals; call ``on_change`` when a managed unit's state,
    or any unit file's enablement, changes."""
    from jeepney import DBusAddress, HeaderFields, MatchRule, new_method_call
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    try:
        connection = open_dbus_connection(bus="SYSTEM")
    except OSError as exc:
        raise Unavailable(f"cannot reach systemd over D-Bus: {exc.strerror or exc}") from exc
    paths = {_unit_object_path(unit) for unit in units}
    with connection:
        rules = [
            MatchRule(
                type="signal",
                sender=_SYSTEMD,
                interface="org.freedesktop.DBus.Properties",
                member="PropertiesChanged",
                path=path,
            )
            for path in paths
        ]
        rules.append(MatchRule(type="signal", sender=_SYSTEMD, member="UnitFilesChanged"))
        rules.append(MatchRule(type="signal", sender=_SYSTEMD, member="Reloading"))
        for rule in rules:
            connection.send_and_get_reply(message_bus.AddMatch(rule))
        manager = DBusAddress(_MANAGER_PATH, bus_name=_SYSTEMD, interface=f"{_SYSTEMD}.Manager")
        # systemd sends unit signals only while some client has subscribed.
        connection.send_and_get_reply(new_method_call(manager, "Subscribe"))
        while not stop.is_set():
            try:
                message = connection.receive(timeout=_RECEIVE_TIMEOUT_S)
            except TimeoutError:
                continue
            fields = message.header.fields
            if fields.get(HeaderFields.path) in paths or fields.get(HeaderFields.member) in (
                "UnitFilesChanged",
                "Reloading",
            ):
                on_change()


def _unit_object_path(unit: str) -> str:
    """systemd's object path for a unit (its bus_label_escape): every byte but
    ASCII letters, and digits after the first byte, becomes ``_xx``."""
    escaped = "".join(
        chr(byte) if chr(byte).isalpha() or (i and chr(byte).isdigit()) else f"_{byte:02x}"
        for i, byte in enumerate(unit.encode())
    )
    return f"{_MANAGER_PATH}/unit/{escaped}"


register(ServiceKind())
