"""The service kind: parse and diff from tables.

The kind runs for real against systemd inside a booted container
(tests/system/test_services.py); here only what needs no host.
"""

from __future__ import annotations

from typing import Any

import pytest

from modules import registry
from modules.base import Change
from modules.service import ServiceSpec, ServiceState, _unit_object_path
from tests.modules.cases import Fails, check_parse

KIND = registry.get("service")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"unit": "web"}, ServiceSpec("web.service")),
        ({"unit": "web.service", "state": "running"}, ServiceSpec("web.service", running=True)),
        ({"unit": "backup.timer", "enabled": False}, ServiceSpec("backup.timer", enabled=False)),
        ({"unit": "getty@tty1", "state": "stopped"}, ServiceSpec("getty@tty1.service", False)),
        (
            {"unit": "web", "content": "[Service]\nExecStart=/bin/true\n"},
            ServiceSpec("web.service", content="[Service]\nExecStart=/bin/true\n"),
        ),
        ({}, Fails("unit", "required field is missing")),
        ({"unit": "-web"}, Fails("unit", "not a valid systemd unit name")),
        ({"unit": "../web"}, Fails("unit", "not a valid systemd unit name")),
        ({"unit": "web", "state": "started"}, Fails("state", "expected one of running, stopped")),
        ({"unit": "web", "enabled": "yes"}, Fails("enabled", "expected a boolean")),
        ({"unit": "web", "restart": True}, Fails("restart", "unknown field")),
    ],
)
def test_parse(raw: dict[str, Any], expected: object) -> None:
    check_parse(KIND, raw, expected)


def observed(active: str = "active", unit_file: str = "enabled") -> ServiceState:
    sub = "running" if active == "active" else "dead"
    return ServiceState("loaded", active, sub, unit_file, 42 if active == "active" else 0)


@pytest.mark.parametrize(
    ("spec", "state", "changes"),
    [
        (ServiceSpec("w.service"), observed("inactive", "disabled"), []),  # nothing managed
        (ServiceSpec("w.service", running=True, enabled=True), observed(), []),
        (
            ServiceSpec("w.service", running=True),
            observed("failed"),
            [Change("state", "failed (dead)", "running")],
        ),
        (
            ServiceSpec("w.service", running=False),
            observed(),
            [Change("state", "active (running)", "stopped")],
        ),
        (
            ServiceSpec("w.service", enabled=True),
            observed(unit_file="disabled"),
            [Change("enabled", "disabled", "enabled")],
        ),
        (
            ServiceSpec("w.service", enabled=True),
            ServiceState("not-found", "inactive", "dead", "", 0),
            [Change("enabled", "absent", "enabled")],
        ),
        (ServiceSpec("w.service", running=True), observed("activating"), []),
    ],
)
def test_diff(spec: ServiceSpec, state: ServiceState, changes: list[Change]) -> None:
    assert KIND.diff(spec, state) == changes


@pytest.mark.parametrize(
    ("unit", "path"),
    [
        ("web.service", "/org/freedesktop/systemd1/unit/web_2eservice"),
        ("getty@tty1.service", "/org/freedesktop/systemd1/unit/getty_40tty1_2eservice"),
        ("a-b_c.timer", "/org/freedesktop/systemd1/unit/a_2db_5fc_2etimer"),
        ("1web.service", "/org/freedesktop/systemd1/unit/_31web_2eservice"),
    ],
)
def test_unit_object_path_escapes_like_systemd(unit: str, path: str) -> None:
    assert _unit_object_path(unit) == path
