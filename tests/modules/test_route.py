"""The route kind: pure parse, diff and parser tables, then the real kernel in a netns."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from modules.base import Change, Context, Risky, Watchable
from modules.errors import ApplyError, ReadError
from modules.route import (
    ABSENT_ROUTE,
    RouteKey,
    RouteKind,
    RouteSpec,
    RouteState,
    Scope,
    _concerns,
    parse_routes,
)
from modules.spec import Presence
from tests.modules.cases import Fails, check_parse
from tests.modules.watching import Watching

KIND = RouteKind()
NET = ipaddress.ip_network
ADDR = ipaddress.ip_address
ABSENT = Presence.ABSENT


# --- parse -------------------------------------------------------------------


PARSE_CASES: list[tuple[str, Any, RouteSpec | Fails]] = [
    (
        "gateway",
        {"destination": "198.51.100.0/24", "gateway": "192.0.2.254"},
        RouteSpec(NET("198.51.100.0/24"), gateway=ADDR("192.0.2.254")),
    ),
    (
        "everything",
        {
            "destination": "198.51.100.0/24",
            "gateway": "192.0.2.254",
            "device": "veth0",
            "metric": 100,
            "table": 100,
            "scope": "global",
        },
        RouteSpec(
            NET("198.51.100.0/24"),
            gateway=ADDR("192.0.2.254"),
            device="veth0",
            metric=100,
            table=100,
            scope=Scope.GLOBAL,
        ),
    ),
    (
        "device only",
        {"destination": "203.0.113.0/24", "device": "eth0"},
        RouteSpec(NET("203.0.113.0/24"), device="eth0"),
    ),
    (
        "default is IPv4",
        {"destination": "default", "device": "eth0"},
        RouteSpec(NET("0.0.0.0/0"), device="eth0"),
    ),
    (
        "default follows an IPv6 gateway",
        {"destination": "default", "gateway": "2001:db8::1"},
        RouteSpec(NET("::/0"), gateway=ADDR("2001:db8::1")),
    ),
    (
        "IPv6 normalised",
        {"destination": "2001:0db8:0001:0000::/64", "gateway": "2001:db8:0::1"},
        RouteSpec(NET("2001:db8:1::/64"), gateway=ADDR("2001:db8::1")),
    ),
    (
        "host route",
        {"destination": "198.51.100.7", "device": "eth0"},
        RouteSpec(NET("198.51.100.7/32"), device="eth0"),
    ),
    (
        "table by name",
        {"destination": "default", "device": "e", "table": "local"},
        RouteSpec(NET("0.0.0.0/0"), device="e", table=255),
    ),
    (
        "absent",
        {"destination": "198.51.100.0/24", "state": "absent", "metric": 5},
        RouteSpec(NET("198.51.100.0/24"), metric=5, state=ABSENT),
    ),
    ("destination missing", {"gateway": "192.0.2.1"}, Fails("destination", "required field")),
    (
        "host bits set",
        {"destination": "198.51.100.1/24", "device": "e"},
        Fails("destination", "198.51.100.1/24 has host bits set; the network is 198.51.100.0/24"),
    ),
    (
        "not a prefix",
        {"destination": "198.51.100.0/33", "device": "e"},
        Fails("destination", "expected a prefix such as 198.51.100.0/24 or default"),
    ),
    ("destination int", {"destination": 10, "device": "e"}, Fails("destination", "integer 10")),
    (
        "gateway not an address",
        {"destination": "default", "gateway": "router"},
        Fails("gateway", "expected an IPv4 or IPv6 address, got 'router'"),
    ),
    (
        "gateway other family",
        {"destination": "198.51.100.0/24", "gateway": "2001:db8::1"},
        Fails("gateway", "2001:db8::1 is IPv6 but destination 198.51.100.0/24 is IPv4"),
    ),
    (
        "gateway with zone",
        {"destination": "::/0", "gateway": "fe80::1%eth0"},
        Fails("gateway", "give the interface as device"),
    ),
    (
        "neither gateway nor device",
        {"destination": "198.51.100.0/24"},
        Fails("gateway", "needs a gateway, a device or both"),
    ),
    (
        "device too long",
        {"destination": "default", "device": "a" * 16},
        Fails("device", "expected an interface name"),
    ),
    ("device with slash", {"destination": "default", "device": "a/b"}, Fails("device", "'a/b'")),
    (
        "metric negative",
        {"destination": "default", "device": "e", "metric": -1},
        Fails("metric", "0.."),
    ),
    (
        "metric too big",
        {"destination": "default", "device": "e", "metric": 2**32},
        Fails("metric", "got 4294967296"),
    ),
    (
        "metric string",
        {"destination": "default", "device": "e", "metric": "5"},
        Fails("metric", "integer"),
    ),
    ("table zero", {"destination": "default", "device": "e", "table": 0}, Fails("table", "got 0")),
    (
        "table unknown name",
        {"destination": "default", "device": "e", "table": "mian"},
        Fails("table", "one of main, local, default, got 'mian'"),
    ),
    (
        "table boolean",
        {"destination": "default", "device": "e", "table": True},
        Fails("table", "a table number"),
    ),
    (
        "scope unknown",
        {"destination": "default", "device": "e", "scope": "site"},
        Fails("scope", "one of global, link, host"),
    ),
    (
        "scope on IPv6",
        {"destination": "::/0", "device": "e", "scope": "link"},
        Fails("scope", "IPv4 routes only"),
    ),
    (
        "absent with gateway",
        {"destination": "default", "state": "absent", "gateway": "192.0.2.1"},
        Fails("gateway", "not allowed with state: absent"),
    ),
    (
        "state unknown",
        {"destination": "default", "device": "e", "state": "up"},
        Fails("state", "present, absent"),
    ),
    (
        "unknown field",
        {"destination": "default", "device": "e", "via": "x"},
        Fails("via", "unknown field 'via'"),
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse(raw: Any, expected: RouteSpec | Fails) -> None:
    check_parse(KIND, raw, expected)


def test_docstring_example_parses_from_yaml() -> None:
    text = "{destination: 198.51.100.0/24, gateway: 192.0.2.254, device: eth0, metric: 100}"
    spec = KIND.parse(yaml.safe_load(text))
    assert spec == RouteSpec(
        NET("198.51.100.0/24"), gateway=ADDR("192.0.2.254"), device="eth0", metric=100
    )
    v6 = KIND.parse(yaml.safe_load('{destination: "::/0", gateway: "2001:db8::1", table: 100}'))
    assert v6.key == RouteKey(NET("::/0"), 100, 1024)


# --- diff (pure) ---------------------------------------------------------------

GW = RouteSpec(NET("198.51.100.0/24"), gateway=ADDR("192.0.2.254"))
VIA_254 = RouteState(True, gateway="192.0.2.254", device="veth0", scope="global")

DIFF_CASES: list[tuple[str, RouteSpec, RouteState, list[Change]]] = [
    ("converged", GW, VIA_254, []),
    ("converged with device", dataclasses.replace(GW, device="veth0"), VIA_254, []),
    ("absent and absent", dataclasses.replace(GW, gateway=None, state=ABSENT), ABSENT_ROUTE, []),
    (
        "add",
        dataclasses.replace(GW, device="veth0", scope=Scope.GLOBAL),
        ABSENT_ROUTE,
        [
            Change("state", "absent", "present"),
            Change("gateway", "absent", "192.0.2.254"),
            Change("device", "absent", "veth0"),
            Change("scope", "absent", "global"),
        ],
    ),
    (
        "add device route",
        RouteSpec(NET("203.0.113.0/24"), device="veth0"),
        ABSENT_ROUTE,
        [Change("state", "absent", "present"), Change("device", "absent", "veth0")],
    ),
    (
        "remove",
        RouteSpec(NET("198.51.100.0/24"), state=ABSENT),
        VIA_254,
        [Change("state", "present", "absent")],
    ),
    (
        "gateway",
        dataclasses.replace(GW, gateway=ADDR("192.0.2.253")),
        VIA_254,
        [Change("gateway", "192.0.2.254", "192.0.2.253")],
    ),
    (
        "gateway to be dropped",
        RouteSpec(NET("198.51.100.0/24"), device="veth0"),
        VIA_254,
        [Change("gateway", "192.0.2.254", "none")],
    ),
    (
        "gateway to be added",
        GW,
        RouteState(True, device="veth0", scope="link"),
        [Change("gateway", "none", "192.0.2.254")],
    ),
    (
        "device",
        dataclasses.replace(GW, device="veth1"),
        VIA_254,
        [Change("device", "veth0", "veth1")],
    ),
    (
        "scope",
        RouteSpec(NET("203.0.113.0/24"), device="veth0", scope=Scope.LINK),
        RouteState(True, device="veth0", scope="global"),
        [Change("scope", "global", "link")],
    ),
    (
        "scope unmanaged",
        RouteSpec(NET("203.0.113.0/24"), device="veth0"),
        RouteState(True, device="veth0", scope="host"),
        [],
    ),
]


@pytest.mark.parametrize(
    ("spec", "state", "expected"), [c[1:] for c in DIFF_CASES], ids=[c[0] for c in DIFF_CASES]
)
def test_diff(spec: RouteSpec, state: RouteState, expected: list[Change]) -> None:
    assert KIND.diff(spec, state) == expected


# --- parser on recorded netlink messages ------------------------------------------


def message(family: int = socket.AF_INET, dst_len: int = 24, **fields: Any) -> dict[str, Any]:
    """An RTM_NEWROUTE message as ``dict(msg)`` gives it, from a pyroute2 0.9 dump."""
    attrs = fields.pop("attrs")
    base = {"family": family, "dst_len": dst_len, "src_len": 0, "tos": 0, "table": 254}
    return {**base, "proto": 4, "scope": 0, "type": 1, "flags": 0, **fields, "attrs": attrs}


LINKS = {1: "lo", 3: "veth0"}
V4_KEY = RouteKey(NET("198.51.100.0/24"), 254, 0)
V4 = message(
    attrs=[
        ("RTA_TABLE", 254),
        ("RTA_DST", "198.51.100.0"),
        ("RTA_GATEWAY", "192.0.2.254"),
        ("RTA_OIF", 3),
    ]
)
CONNECTED = message(
    scope=253,
    attrs=[
        ("RTA_TABLE", 254),
        ("RTA_DST", "192.0.2.0"),
        ("RTA_PREFSRC", "192.0.2.1"),
        ("RTA_OIF", 3),
    ],
)
V6 = message(
    socket.AF_INET6,
    64,
    attrs=[
        ("RTA_TABLE", 254),
        ("RTA_DST", "2001:db8:1::"),
        ("RTA_PRIORITY", 1024),
        ("RTA_GATEWAY", "2001:db8::fe"),
        ("RTA_OIF", 3),
        ("RTA_PREF", 0),
    ],
)

PARSER_CASES: list[tuple[str, list[dict[str, Any]], RouteKey, RouteState]] = [
    ("found", [CONNECTED, V4], V4_KEY, VIA_254),
    (
        "link scope",
        [CONNECTED, V4],
        RouteKey(NET("192.0.2.0/24"), 254, 0),
        RouteState(True, device="veth0", scope="link"),
    ),
    ("other metric", [V4], RouteKey(NET("198.51.100.0/24"), 254, 100), ABSENT_ROUTE),
    (
        "metric attribute",
        [message(attrs=[*V4["attrs"], ("RTA_PRIORITY", 100)])],
        RouteKey(NET("198.51.100.0/24"), 254, 100),
        VIA_254,
    ),
    ("other table", [V4], RouteKey(NET("198.51.100.0/24"), 100, 0), ABSENT_ROUTE),
    (
        "big table in the attribute",
        [
            message(
                table=252,
                attrs=[("RTA_TABLE", 100000), ("RTA_DST", "198.51.100.0"), ("RTA_OIF", 3)],
            )
        ],
        RouteKey(NET("198.51.100.0/24"), 100000, 0),
        RouteState(True, device="veth0", scope="global"),
    ),
    ("other prefix length", [message(dst_len=25, attrs=V4["attrs"])], V4_KEY, ABSENT_ROUTE),
    (
        "default route has no RTA_DST",
        [
            message(
                dst_len=0, attrs=[("RTA_TABLE", 254), ("RTA_GATEWAY", "192.0.2.1"), ("RTA_OIF", 3)]
            )
        ],
        RouteKey(NET("0.0.0.0/0"), 254, 0),
        RouteState(True, gateway="192.0.2.1", device="veth0", scope="global"),
    ),
    (
        "IPv6 metric 1024",
        [V6],
        RouteKey(NET("2001:db8:1::/64"), 254, 1024),
        RouteState(True, gateway="2001:db8::fe", device="veth0", scope="global"),
    ),
    ("IPv6 key on IPv4 dump", [V4], RouteKey(NET("::/0"), 254, 1024), ABSENT_ROUTE),
    (
        "source-specific is another route",
        [message(src_len=64, attrs=V4["attrs"])],
        V4_KEY,
        ABSENT_ROUTE,
    ),
    ("TOS is another route", [message(tos=16, attrs=V4["attrs"])], V4_KEY, ABSENT_ROUTE),
    ("cache clone skipped", [message(flags=0x200, attrs=V4["attrs"])], V4_KEY, ABSENT_ROUTE),
    (
        "unknown device index",
        [message(attrs=[("RTA_DST", "198.51.100.0"), ("RTA_OIF", 9)])],
        V4_KEY,
        RouteState(True, device="if9", scope="global"),
    ),
    (
        "numeric scope",
        [message(scope=17, attrs=V4["attrs"])],
        V4_KEY,
        dataclasses.replace(VIA_254, scope="17"),
    ),
    ("empty dump", [], V4_KEY, ABSENT_ROUTE),
]


@pytest.mark.parametrize(
    ("messages", "key", "expected"),
    [c[1:] for c in PARSER_CASES],
    ids=[c[0] for c in PARSER_CASES],
)
def test_parse_routes(messages: list[dict[str, Any]], key: RouteKey, expected: RouteState) -> None:
    assert parse_routes(messages, key, LINKS) == expected


# --- the real kernel, in a namespace of our own ---------------------------------------

_NAMES = itertools.count()


def ip(netns: str, *args: str) -> str:
    done = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace: lo up, veth0 (192.0.2.1/24, 2001:db8::1/64) and veth1 up."""
    name = f"plumb-t-{os.getpid()}-{next(_NAMES)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        ip(name, "link", "set", "veth0", "up")
        ip(name, "link", "set", "veth1", "up")
        ip(name, "address", "add", "192.0.2.1/24", "dev", "veth0")
        ip(name, "-6", "address", "add", "2001:db8::1/64", "dev", "veth0", "nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def ctx(netns: str) -> Context:
    return Context(netns=netns)


def kernel_routes(netns: str, table: str = "main", *, v6: bool = False) -> dict[str, Any]:
    """``ip -j route show`` of one table, by destination and metric."""
    family = ["-6"] if v6 else []
    out = json.loads(ip(netns, *family, "-j", "route", "show", "table", table))
    return {f"{r['dst']} metric {r.get('metric', 0)}": r for r in out}


def converge(ctx: Context, **raw: Any) -> list[Change]:
    """One enforce run: read, diff, apply; then check that a second run finds nothing."""
    spec = KIND.parse(raw)
    changes = KIND.diff(spec, KIND.read(ctx, spec))
    if changes:
        KIND.apply(ctx, spec, KIND.read(ctx, spec), changes)
    assert KIND.diff(spec, KIND.read(ctx, spec)) == []
    return changes


def test_add_route(ctx: Context, netns: str) -> None:
    raw = {"destination": "198.51.100.0/24", "gateway": "192.0.2.254"}
    changes = converge(ctx, **raw)
    assert changes == [
        Change("state", "absent", "present"),
        Change("gateway", "absent", "192.0.2.254"),
    ]
    route = kernel_routes(netns)["198.51.100.0/24 metric 0"]
    assert (route["gateway"], route["dev"]) == ("192.0.2.254", "veth0")
    assert converge(ctx, **raw) == []
    spec = KIND.parse(raw)
    assert KIND.read(ctx, spec) == RouteState(True, "192.0.2.254", "veth0", "global")


def test_change_gateway_replaces(ctx: Context, netns: str) -> None:
    converge(ctx, destination="198.51.100.0/24", gateway="192.0.2.254")
    changes = converge(ctx, destination="198.51.100.0/24", gateway="192.0.2.253")
    assert changes == [Change("gateway", "192.0.2.254", "192.0.2.253")]
    routes = [r for r in kernel_routes(netns).values() if r["dst"] == "198.51.100.0/24"]
    assert [r["gateway"] for r in routes] == ["192.0.2.253"]


def test_other_metric_is_another_route(ctx: Context, netns: str) -> None:
    converge(ctx, destination="198.51.100.0/24", gateway="192.0.2.254")
    changes = converge(ctx, destination="198.51.100.0/24", gateway="192.0.2.253", metric=100)
    assert changes[0] == Change("state", "absent", "present")
    routes = kernel_routes(netns)
    assert routes["198.51.100.0/24 metric 0"]["gateway"] == "192.0.2.254"
    assert routes["198.51.100.0/24 metric 100"]["gateway"] == "192.0.2.253"
    # Removing one leaves the other.
    converge(ctx, destination="198.51.100.0/24", metric=100, state="absent")
    assert set(kernel_routes(netns)) >= {"198.51.100.0/24 metric 0"}
    assert "198.51.100.0/24 metric 100" not in kernel_routes(netns)


def test_table_100_default_route(ctx: Context, netns: str) -> None:
    changes = converge(ctx, destination="default", gateway="192.0.2.254", table=100)
    assert changes[0] == Change("state", "absent", "present")
    assert kernel_routes(netns, "100")["default metric 0"]["gateway"] == "192.0.2.254"
    assert not any(r["dst"] == "default" for r in kernel_routes(netns).values())
    assert converge(ctx, destination="default", table=100, state="absent") == [
        Change("state", "present", "absent")
    ]
    assert kernel_routes(netns, "100") == {}


def test_device_route_gets_link_scope(ctx: Context, netns: str) -> None:
    converge(ctx, destination="203.0.113.0/24", device="veth0")
    route = kernel_routes(netns)["203.0.113.0/24 metric 0"]
    assert (route["dev"], route["scope"], "gateway" in route) == ("veth0", "link", False)
    changes = converge(ctx, destination="203.0.113.0/24", device="veth1", scope="host")
    assert changes == [Change("device", "veth0", "veth1"), Change("scope", "link", "host")]
    assert kernel_routes(netns)["203.0.113.0/24 metric 0"]["scope"] == "host"


def test_absent_removes_even_kernel_routes(ctx: Context, netns: str) -> None:
    # The connected route has protocol kernel and link scope; delete must still match it.
    changes = converge(ctx, destination="192.0.2.0/24", state="absent")
    assert changes == [Change("state", "present", "absent")]
    assert "192.0.2.0/24 metric 0" not in kernel_routes(netns)
    assert converge(ctx, destination="192.0.2.0/24", state="absent") == []


def test_unreachable_gateway_carries_kernel_message(ctx: Context, netns: str) -> None:
    spec = KIND.parse({"destination": "198.51.100.0/24", "gateway": "203.0.113.9"})
    state = KIND.read(ctx, spec)
    with pytest.raises(ApplyError) as caught:
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    message = str(caught.value)
    assert "cannot replace route 198.51.100.0/24 metric 0 table 254" in message
    assert f"in netns {ctx.netns}: Network is unreachable (netlink error 101)" in message
    assert isinstance(caught.value.__cause__, Exception)
    assert "198.51.100.0/24 metric 0" not in kernel_routes(netns)


def test_missing_device(ctx: Context) -> None:
    spec = KIND.parse({"destination": "198.51.100.0/24", "device": "nosuch0"})
    state = KIND.read(ctx, spec)
    assert KIND.diff(spec, state)[-1] == Change("device", "absent", "nosuch0")
    with pytest.raises(ApplyError, match="no such device 'nosuch0'"):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))


def test_ipv6_route(ctx: Context, netns: str) -> None:
    raw = {"destination": "2001:db8:1::/64", "gateway": "2001:db8::fe", "device": "veth0"}
    changes = converge(ctx, **raw)
    assert changes[0] == Change("state", "absent", "present")
    # Metric 0 is the kernel's 1024 for IPv6, and the run above converged on it.
    route = kernel_routes(netns, v6=True)["2001:db8:1::/64 metric 1024"]
    assert (route["gateway"], route["dev"]) == ("2001:db8::fe", "veth0")
    assert converge(ctx, **{**raw, "gateway": "2001:db8::fd"}) == [
        Change("gateway", "2001:db8::fe", "2001:db8::fd")
    ]
    converge(ctx, destination="2001:db8:1::/64", state="absent")
    assert "2001:db8:1::/64 metric 1024" not in kernel_routes(netns, v6=True)


def test_missing_namespace_is_a_read_error() -> None:
    name = f"plumb-t-{os.getpid()}-missing"
    ctx = Context(netns=name)
    spec = KIND.parse({"destination": "default", "device": "lo"})
    with pytest.raises(ReadError, match="network namespace does not exist"):
        KIND.read(ctx, spec)
    # pyroute2 would have created it without flags=0.
    assert name not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout


# --- restore -----------------------------------------------------------------------


def restore_after(ctx: Context, raw: dict[str, Any], change: dict[str, Any]) -> None:
    """Snapshot the route of ``raw``, converge ``change``, restore, and compare."""
    spec = KIND.parse(raw)
    snapshot = KIND.read(ctx, spec)
    assert ctx.netns is not None
    before = kernel_routes(ctx.netns)
    converge(ctx, **change)
    assert KIND.read(ctx, spec) != snapshot
    KIND.restore(ctx, spec, snapshot)
    assert KIND.read(ctx, spec) == snapshot
    assert kernel_routes(ctx.netns) == before


def test_restore_puts_back_a_changed_route(ctx: Context) -> None:
    raw = {"destination": "198.51.100.0/24", "gateway": "192.0.2.254"}
    converge(ctx, **raw)
    restore_after(ctx, raw, raw | {"gateway": "192.0.2.253", "device": "veth0"})


def test_restore_puts_back_a_link_scope_device_route(ctx: Context) -> None:
    raw = {"destination": "203.0.113.0/24", "device": "veth0"}
    converge(ctx, **raw)
    restore_after(ctx, raw, {"destination": "203.0.113.0/24", "device": "veth1", "scope": "host"})


def test_restore_deletes_a_route_that_was_absent(ctx: Context) -> None:
    raw = {"destination": "198.51.100.0/24", "gateway": "192.0.2.254", "metric": 7}
    restore_after(ctx, raw, raw)
    # Restoring "absent" once more finds nothing to delete and is no error.
    KIND.restore(ctx, KIND.parse(raw), ABSENT_ROUTE)


def test_restore_puts_back_a_deleted_ipv6_route(ctx: Context, netns: str) -> None:
    raw = {"destination": "2001:db8:1::/64", "gateway": "2001:db8::fe", "device": "veth0"}
    converge(ctx, **raw)
    spec = KIND.parse(raw)
    snapshot = KIND.read(ctx, spec)
    before = kernel_routes(netns, v6=True)
    converge(ctx, destination="2001:db8:1::/64", state="absent")
    KIND.restore(ctx, spec, snapshot)
    assert KIND.read(ctx, spec) == snapshot
    assert kernel_routes(netns, v6=True) == before


def test_kind_is_risky_and_watchable() -> None:
    assert isinstance(KIND, Risky) and isinstance(KIND, Watchable)


# --- watch ---------------------------------------------------------------------


def toggle(netns: str, *words: str) -> Callable[[], object]:
    """An action that replaces a route alternately with its last two words' values:
    replacing a route with an identical one notifies nobody.
    """
    *route, first, second = words
    values = itertools.cycle((first, second))
    if route[0] == "-6":
        route = route[1:]
        return lambda: ip(netns, "-6", "route", "replace", *route, next(values))
    return lambda: ip(netns, "route", "replace", *route, next(values))


@pytest.fixture
def watching(ctx: Context) -> Iterator[Callable[..., Watching]]:
    started: list[Watching] = []

    def start(*raws: dict[str, Any]) -> Watching:
        watcher = Watching(KIND, ctx, [KIND.parse(raw) for raw in raws])
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.finish()


def test_watch_reports_an_out_of_band_delete(
    ctx: Context, netns: str, watching: Callable[..., Watching]
) -> None:
    raw = {"destination": "198.51.100.0/24", "gateway": "192.0.2.254"}
    converge(ctx, **raw)
    watcher = watching(raw)
    watcher.prime(toggle(netns, "198.51.100.0/24", "via", "192.0.2.254", "192.0.2.253"))
    assert watcher.changed_by(lambda: ip(netns, "route", "del", "198.51.100.0/24"))
    assert watcher.changed_by(
        lambda: ip(netns, "route", "add", "198.51.100.0/24", "via", "192.0.2.9")
    )
    assert not watcher.errors


def test_watch_reports_ipv6_and_other_tables(
    ctx: Context, netns: str, watching: Callable[..., Watching]
) -> None:
    v6 = {"destination": "2001:db8:1::/64", "device": "veth0"}
    table = {"destination": "default", "gateway": "192.0.2.254", "table": 100}
    watcher = watching(v6, table)
    watcher.prime(toggle(netns, "-6", "2001:db8:1::/64", "dev", "veth0", "veth1"))
    assert watcher.changed_by(
        lambda: ip(netns, "route", "add", "default", "via", "192.0.2.1", "table", "100")
    )
    assert watcher.changed_by(lambda: ip(netns, "-6", "route", "del", "2001:db8:1::/64"))


def test_watch_stops_promptly(ctx: Context, netns: str, watching: Callable[..., Watching]) -> None:
    raw = {"destination": "198.51.100.0/24", "gateway": "192.0.2.254"}
    watcher = watching(raw)
    watcher.prime(toggle(netns, "198.51.100.0/24", "via", "192.0.2.254", "192.0.2.253"))
    # An unmanaged route: the watcher may or may not report it, but must keep running.
    ip(netns, "route", "add", "203.0.113.0/24", "dev", "veth0")
    started = time.monotonic()
    watcher.finish()
    assert not watcher.thread.is_alive()
    assert time.monotonic() - started < 1.5
    assert not watcher.errors


def test_watch_ignores_unmanaged_destinations() -> None:
    key = KIND.parse({"destination": "198.51.100.0/24", "device": "veth0"}).key
    managed = message(attrs=[("RTA_DST", "198.51.100.0")], event="RTM_NEWROUTE")
    other = message(attrs=[("RTA_DST", "203.0.113.0")], event="RTM_DELROUTE")
    assert _concerns(managed, [key]) and not _concerns(other, [key])
    assert not _concerns(managed | {"event": "RTM_NEWADDR"}, [key])
