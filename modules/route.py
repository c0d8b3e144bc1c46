"""The ``route`` kind: one IPv4 or IPv6 route in a kernel routing table, over netlink.

Example manifest::

    - kind: route
      name: backup-network
      spec: {destination: 198.51.100.0/24, gateway: 192.0.2.254, device: eth0, metric: 100}
    - kind: route
      name: v6-default
      spec: {destination: "::/0", gateway: "2001:db8::1", table: 100}

Spec fields:

``destination``
    Required. A prefix (``198.51.100.0/24``, ``2001:db8:1::/64``), a single
    address (a host route, ``/32`` or ``/128``) or ``default``, which is
    ``0.0.0.0/0`` unless the gateway is an IPv6 address (write ``::/0`` for an
    IPv6 default route through a device alone). A prefix with host bits set
    (``198.51.100.1/24``) is refused rather than silently truncated.
``gateway``
    An address of the destination's family. Not given: the route is directly
    connected, so an observed gateway is removed.
``device``
    An interface name. Not given: the kernel picks the device from the
    gateway, and whatever it picked is kept. A present route needs a gateway,
    a device or both.
``metric``
    An integer from 0 (default) to 4294967295. Part of the route's identity:
    the same prefix with another metric is another route, left alone. For
    IPv6, metric 0 means the kernel's default 1024, as with ``ip -6 route``.
``table``
    A number from 1 to 4294967295 or ``main`` (254, default), ``local``
    (255) or ``default`` (253). Also part of the route's identity.
``scope``
    ``global``, ``link`` or ``host``, IPv4 only (the kernel keeps every IPv6
    route at global scope). Not given: not managed; a route that is written
    gets ``link`` without a gateway and ``global`` with one, as ``ip route``
    does.
``state``
    ``present`` (default) or ``absent``. With ``absent`` only the identity
    (``destination``, ``metric``, ``table``) may be given.

Behaviour worth knowing: a present route is written with one netlink
``replace``, so it changes atomically and traffic never sees it missing. The
kind acts in ``Context.netns`` when set; a netlink socket is opened for each
read or apply and closed after it, because a pyroute2 socket must stay with
the thread that opened it. The kind is risky: :meth:`RouteKind.restore`
puts back the gateway, device and scope a read saw (or deletes the route).
:meth:`RouteKind.watch` listens to the kernel's route notifications.
Reading and watching need no capability, changing a route needs
CAP_NET_ADMIN; an agent without it fails with ``unavailable: CAP_NET_ADMIN is
missing ...`` rather than the kernel's bare EPERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import ipaddress
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from modules.base import Change, Context, Identity, Kind, Removable, Risky, Watchable
from modules.capabilities import net_admin_missing
from modules.errors import ApplyError, OperationError, ReadError, SpecError
from modules.registry import register
from modules.spec import Field, Presence, SpecReader

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAIN_TABLE = 254
TABLE_NAMES = {"main": MAIN_TABLE, "local": 255, "default": 253}
MAX_U32 = 2**32 - 1
# The kernel stores an IPv6 route added with metric 0 under this metric.
IPV6_DEFAULT_METRIC = 1024
# rtm_flags bit of route cache entries, which a dump may include; not routes.
_RTM_F_CLONED = 0x200
_RT_SCOPE_NOWHERE = 255  # in a delete request: "any scope"
_IFNAMSIZ = 16
_ESRCH = 3  # netlink error of a delete that finds no such route
# How long the watcher waits for netlink before looking at its stop event again.
_STOP_POLL_S = 0.2


class Scope(enum.StrEnum):
    """The scopes a spec may ask for, with their kernel numbers below."""

    GLOBAL = "global"
    LINK = "link"
    HOST = "host"


_SCOPE_CODES = {Scope.GLOBAL: 0, Scope.LINK: 253, Scope.HOST: 254}
# Names for every scope a kernel route may have, for reports.
_SCOPE_NAMES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}


@dataclasses.dataclass(frozen=True)
class RouteSpec:
    """A parsed ``route`` spec. None means "not managed" (see the module docstring)."""

    destination: Network
    gateway: Address | None = None
    device: str | None = None
    metric: int = 0
    table: int = MAIN_TABLE
    scope: Scope | None = None
    state: Presence = Presence.PRESENT

    @property
    def key(self) -> RouteKey:
        """What identifies this route in the kernel."""
        return RouteKey(self.destination, self.table, _kernel_metric(self))

    def __str__(self) -> str:
        return f"route {self.destination} metric {self.metric} table {self.table}"


@dataclasses.dataclass(frozen=True)
class RouteKey:
    """A kernel route's identity: destination, table and metric (as the kernel stores it)."""

    destination: Network
    table: int
    metric: int

    @property
    def family(self) -> int:
        return socket.AF_INET if self.destination.version == 4 else socket.AF_INET6


@dataclasses.dataclass(frozen=True)
class RouteState:
    """What :meth:`RouteKind.read` saw. Fields past ``present`` are set only when present."""

    present: bool
    gateway: str | None = None  # an address, as ipaddress renders it
    device: str | None = None  # an interface name, or "if<index>" if it has none
    scope: str | None = None  # "global", "link", ... or the number


ABSENT_ROUTE = RouteState(present=False)


class RouteKind(
    Kind[RouteSpec, RouteState],
    Risky[RouteSpec, RouteState],
    Watchable[RouteSpec],
    Removable[RouteSpec],
):
    """Manages one route of one routing table."""

    name = "route"
    # Netlink calls are made in-process and answer at once; nothing here runs
    # a command the deadline could cut short, but a short limit says what a
    # route change should take if one ever does.
    timeout_s = 30.0
    fields = (
        Field("destination", "a network (198.51.100.0/24), or default", required=True),
        Field("gateway", "next hop address"),
        Field("device", "output interface"),
        Field("metric", "route priority (default 0)"),
        Field("table", "routing table number or main (default)"),
        Field("scope", "global, link or host"),
        Field("state", "present (default) or absent"),
    )

    def parse(self, raw: Mapping[str, Any]) -> RouteSpec:
        reader = SpecReader(raw, self.fields)
        destination_text = reader.string("destination", required=True)
        gateway = _address(reader, "gateway")
        spec = RouteSpec(
            destination=_destination(reader, destination_text, gateway),
            gateway=gateway,
            device=_device(reader),
            metric=_metric(reader),
            table=_table(reader),
            scope=_scope(reader),
            state=reader.choice("state", Presence, default=Presence.PRESENT),
        )
        reader.finish()
        _check_combination(spec)
        return spec

    def identities(self, spec: RouteSpec) -> tuple[Identity, ...]:
        # The kernel's own key: a second route with the same destination, table
        # and metric is the same route (IPv6 metric 0 is stored as 1024).
        key = spec.key
        return (Identity("route", f"{key.destination} table {key.table} metric {key.metric}"),)

    def removal(self, spec: RouteSpec) -> dict[str, Any]:
        # The metric as given: IPv6's 0 means the kernel's 1024 on both sides.
        return {
            "destination": str(spec.destination),
            "metric": spec.metric,
            "table": spec.table,
            "state": "absent",
        }

    def read(self, ctx: Context, spec: RouteSpec) -> RouteState:
        with _translated(ReadError, f"read {_describe(ctx, spec)}"):
            messages, links = observe(ctx, spec.key)
        return parse_routes(messages, spec.key, links)

    def diff(self, spec: RouteSpec, state: RouteState) -> list[Change]:
        if spec.state is Presence.ABSENT:
            return [Change("state", "present", "absent")] if state.present else []
        facets = (
            None if state.present else Change("state", "absent", "present"),
            _gateway_change(spec, state),
            _facet_change("device", spec.device, state.device, state),
            _facet_change("scope", spec.scope, state.scope, state),
        )
        return [change for change in facets if change is not None]

    def apply(
        self, ctx: Context, spec: RouteSpec, state: RouteState, changes: list[Change]
    ) -> None:
        if spec.state is Presence.ABSENT:
            with _translated(ApplyError, f"delete {_describe(ctx, spec)}"), _netlink(ctx) as ipr:
                ipr.route("del", **_delete_request(spec))
            return
        with _translated(ApplyError, f"replace {_describe(ctx, spec)}"), _netlink(ctx) as ipr:
            oif = _device_index(ipr, ctx, spec) if spec.device is not None else None
            ipr.route("replace", **_replace_request(spec, oif))

    def restore(self, ctx: Context, spec: RouteSpec, snapshot: RouteState) -> None:
        """Delete the route if it was absent, else replace it with what was observed."""
        if not snapshot.present:
            action = f"restore {_describe(ctx, spec)} to absent"
            with _translated(ApplyError, action), _netlink(ctx) as ipr:
                _delete_if_present(ipr, spec)
            return
        with _translated(ApplyError, f"restore {_describe(ctx, spec)}"), _netlink(ctx) as ipr:
            oif = None if snapshot.device is None else _observed_index(ipr, ctx, snapshot.device)
            ipr.route("replace", **_restore_request(spec, snapshot, oif))

    def watch(
        self,
        ctx: Context,
        specs: Sequence[RouteSpec],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Listen to the kernel's route notifications; report those about managed routes."""
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE

        keys = [spec.key for spec in specs]
        with _translated(ReadError, f"watch routes{_where(ctx)}"), _netlink(ctx) as ipr:
            ipr.bind(groups=RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
            while not stop.is_set():
                ready, _, _ = select.select([ipr.fileno()], [], [], _STOP_POLL_S)
                if ready and any(_concerns(dict(m), keys) for m in ipr.get()):
                    on_change()


# --- parse -------------------------------------------------------------------


def _address(reader: SpecReader, name: str) -> Address | None:
    text = reader.string(name, hint=f'quote it, e.g. {name}: "192.0.2.1"')
    if text is None:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise reader.error(name, f"expected an IPv4 or IPv6 address, got {text!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise reader.error(name, f"give the interface as device, not in the address {text!r}")
    return address


def _destination(reader: SpecReader, text: str, gateway: Address | None) -> Network:
    if text == "default":
        text = "::/0" if gateway is not None and gateway.version == 6 else "0.0.0.0/0"
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        raise reader.error("destination", _bad_destination(text)) from None
    if gateway is not None and gateway.version != network.version:
        message = (
            f"{gateway} is IPv{gateway.version} but destination {network} is IPv{network.version}"
        )
        raise reader.error("gateway", message)
    return network


def _bad_destination(text: str) -> str:
    """Why ``text`` is no destination; host bits get their own message, with the fix."""
    try:
        # Without strict, the host bits would be dropped silently; a typo
        # there would route other addresses than the user meant.
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"expected a prefix such as 198.51.100.0/24 or default, got {text!r}"
    return f"{text} has host bits set; the network is {network}"


def _device(reader: SpecReader) -> str | None:
    name = reader.string("device")
    if name is None:
        return None
    # The kernel's dev_valid_name(): what it refuses, refused here with a reason.
    bad = name in ("", ".", "..") or len(name) >= _IFNAMSIZ
    if bad or any(c == "/" or c == ":" or c.isspace() for c in name):
        message = (
            f"expected an interface name (1-15 characters, no '/', ':' or spaces), got {name!r}"
        )
        raise reader.error("device", message)
    return name


def _metric(reader: SpecReader) -> int:
    metric = reader.integer("metric", default=0)
    if not 0 <= metric <= MAX_U32:
        raise reader.error("metric", f"expected 0..{MAX_U32}, got {metric}")
    return metric


def _table(reader: SpecReader) -> int:
    expected = f"a table number 1..{MAX_U32} or one of main, local, default"
    try:
        value: int | str | None = reader.integer("table")
    except SpecError:
        try:
            value = reader.string("table")
        except SpecError:
            raise reader.error("table", f"expected {expected}") from None
    if value is None:
        return MAIN_TABLE
    if isinstance(value, str):
        if value not in TABLE_NAMES:
            raise reader.error("table", f"expected {expected}, got {value!r}")
        return TABLE_NAMES[value]
    if not 1 <= value <= MAX_U32:
        raise reader.error("table", f"expected {expected}, got {value}")
    return value


def _scope(reader: SpecReader) -> Scope | None:
    text = reader.string("scope")
    if text is None:
        return None
    for scope in Scope:
        if scope.value == text:
            return scope
    allowed = ", ".join(scope.value for scope in Scope)
    raise reader.error("scope", f"expected one of {allowed}, got {text!r}")


def _check_combination(spec: RouteSpec) -> None:
    if spec.state is Presence.ABSENT:
        given = {"gateway": spec.gateway, "device": spec.device, "scope": spec.scope}
        for name, value in given.items():
            if value is not None:
                raise SpecError(name, "not allowed with state: absent (the route is deleted)")
        return
    if spec.gateway is None and spec.device is None:
        raise SpecError("gateway", "a present route needs a gateway, a device or both")
    if spec.scope is not None and spec.destination.version == 6:
        raise SpecError("scope", "applies to IPv4 routes only; every IPv6 route is global")


def _kernel_metric(spec: RouteSpec) -> int:
    if spec.destination.version == 6 and spec.metric == 0:
        return IPV6_DEFAULT_METRIC
    return spec.metric


# --- read --------------------------------------------------------------------


def observe(ctx: Context, key: RouteKey) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The route messages of ``key``'s family and table, and interface names by index.

    Raises NetlinkError or OSError; :meth:`RouteKind.read` translates them.
    """
    with _netlink(ctx) as ipr:
        messages = [dict(m) for m in ipr.route("dump", family=key.family, table=key.table)]
        links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    return messages, links


def parse_routes(
    messages: Iterable[Mapping[str, Any]], key: RouteKey, links: Mapping[int, str]
) -> RouteState:
    """The state of the route with ``key`` among netlink RTM_NEWROUTE messages (as dicts).

    Pure, so it is tested on recorded messages. Routes with a source prefix
    or a TOS are other routes (they are part of the kernel's key too) and
    cache clones are not routes at all: all are skipped.
    """
    for message in messages:
        if _matches(message, key):
            oif = _attr(message, "RTA_OIF")
            gateway = _attr(message, "RTA_GATEWAY")
            scope = int(message.get("scope", 0))
            return RouteState(
                present=True,
                gateway=str(ipaddress.ip_address(gateway)) if gateway is not None else None,
                device=None if oif is None else links.get(oif, f"if{oif}"),
                scope=_SCOPE_NAMES.get(scope, str(scope)),
            )
    return ABSENT_ROUTE


def _matches(message: Mapping[str, Any], key: RouteKey) -> bool:
    if message.get("family") != key.family or message.get("src_len", 0) or message.get("tos", 0):
        return False
    if int(message.get("flags", 0)) & _RTM_F_CLONED:
        return False
    # Tables above 255 only fit the attribute; the header then says 252.
    table = _attr(message, "RTA_TABLE") or message.get("table")
    if table != key.table or (_attr(message, "RTA_PRIORITY") or 0) != key.metric:
        return False
    # A default route carries no RTA_DST at all.
    unspecified = "0.0.0.0" if key.destination.version == 4 else "::"
    destination = _attr(message, "RTA_DST") or unspecified
    return _network(destination, message.get("dst_len", 0)) == key.destination


def _network(address: str, prefixlen: int) -> Network | None:
    try:
        return ipaddress.ip_network(f"{address}/{prefixlen}")
    except ValueError:
        return None


def _attr(message: Mapping[str, Any], name: str) -> Any:
    """The value of netlink attribute ``name`` in a message dict, or None."""
    for attr_name, value in message.get("attrs", ()):
        if attr_name == name:
            return value
    return None


# --- diff (pure) ---------------------------------------------------------------


def _gateway_change(spec: RouteSpec, state: RouteState) -> Change | None:
    desired = "none" if spec.gateway is None else str(spec.gateway)
    if not state.present:
        return None if spec.gateway is None else Change("gateway", "absent", desired)
    observed = state.gateway or "none"
    return None if observed == desired else Change("gateway", observed, desired)


def _facet_change(
    field: str, desired: str | None, observed: str | None, state: RouteState
) -> Change | None:
    """A change of an optional, managed-when-given field (device, scope)."""
    if desired is None:
        return None
    if not state.present:
        return Change(field, "absent", str(desired))
    if observed == desired:
        return None
    return Change(field, observed or "none", str(desired))


# --- apply -------------------------------------------------------------------


def _identity(spec: RouteSpec) -> dict[str, Any]:
    """The request fields that name the route: the kernel's key."""
    key = spec.key
    return {
        "family": key.family,
        "dst": str(spec.destination.network_address),
        "dst_len": spec.destination.prefixlen,
        "table": key.table,
        "priority": key.metric,
    }


def _replace_request(spec: RouteSpec, oif: int | None) -> dict[str, Any]:
    request = _identity(spec)
    if spec.gateway is not None:
        request["gateway"] = str(spec.gateway)
    if oif is not None:
        request["oif"] = oif
    if spec.destination.version == 4:
        default = Scope.GLOBAL if spec.gateway is not None else Scope.LINK
        request["scope"] = _SCOPE_CODES[spec.scope or default]
    return request


def _delete_request(spec: RouteSpec) -> dict[str, Any]:
    # Zero protocol and type and "nowhere" scope match any, as ``ip route del``
    # sends them; pyroute2's defaults (static, unicast, global) would make the
    # kernel refuse to delete a kernel-made or link-scope route.
    return {**_identity(spec), "proto": 0, "type": 0, "scope": _RT_SCOPE_NOWHERE}


def _delete_if_present(ipr: Any, spec: RouteSpec) -> None:
    from pyroute2 import NetlinkError

    try:
        ipr.route("del", **_delete_request(spec))
    except NetlinkError as exc:
        # Already absent is what the caller wants; anything else is not.
        if exc.code != _ESRCH:
            raise


def _restore_request(spec: RouteSpec, snapshot: RouteState, oif: int | None) -> dict[str, Any]:
    """A replace that writes back the gateway, device and scope ``snapshot`` holds."""
    request = _identity(spec)
    if snapshot.gateway is not None:
        request["gateway"] = snapshot.gateway
    if oif is not None:
        request["oif"] = oif
    if spec.destination.version == 4 and snapshot.scope is not None:
        codes = {name: code for code, name in _SCOPE_NAMES.items()}
        scope = snapshot.scope
        request["scope"] = codes[scope] if scope in codes else int(scope)
    return request


def _observed_index(ipr: Any, ctx: Context, device: str) -> int:
    """The index of an observed device: a name, or ``if<index>`` for one without a name."""
    indexes = ipr.link_lookup(ifname=device)
    if indexes:
        return int(indexes[0])
    if device.startswith("if") and device[2:].isdigit():
        return int(device[2:])
    raise ApplyError(f"cannot restore a route via {device!r}: no such device{_where(ctx)}")


# --- watch -------------------------------------------------------------------


def _concerns(message: Mapping[str, Any], keys: Sequence[RouteKey]) -> bool:
    """Whether a route notification may be about one of ``keys``: same family, table
    and destination. Metric and the rest are left to the read that follows.
    """
    if message.get("event") not in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        return False
    table = _attr(message, "RTA_TABLE") or message.get("table")
    for key in keys:
        if message.get("family") != key.family or table != key.table:
            continue
        unspecified = "0.0.0.0" if key.destination.version == 4 else "::"
        destination = _attr(message, "RTA_DST") or unspecified
        if _network(destination, message.get("dst_len", 0)) == key.destination:
            return True
    return False


def _device_index(ipr: Any, ctx: Context, spec: RouteSpec) -> int:
    indexes = ipr.link_lookup(ifname=spec.device)
    if not indexes:
        where = f" in netns {ctx.netns}" if ctx.netns else ""
        raise ApplyError(f"cannot replace {spec}: no such device {spec.device!r}{where}")
    return int(indexes[0])


# --- netlink -------------------------------------------------------------------


@contextlib.contextmanager
def _netlink(ctx: Context) -> Iterator[Any]:
    """A netlink route socket in ``ctx.netns`` (or our own namespace), closed after use."""
    from pyroute2 import IPRoute, NetNS
    from pyroute2.netns import NETNS_RUN_DIR

    if ctx.netns and not os.path.exists(os.path.join(NETNS_RUN_DIR, ctx.netns)):
        # Checked first because pyroute2 leaks its event loop when NetNS fails.
        raise FileNotFoundError(ctx.netns)
    # flags=0: NetNS would otherwise create a namespace that does not exist.
    ipr = NetNS(ctx.netns, flags=0) if ctx.netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _describe(ctx: Context, spec: RouteSpec) -> str:
    return f"{spec}{_where(ctx)}"


def _where(ctx: Context) -> str:
    return f" in netns {ctx.netns}" if ctx.netns else ""


@contextlib.contextmanager
def _translated(error: type[OperationError], action: str) -> Iterator[None]:
    """Turn a netlink or OS error into ``error`` naming the action and the kernel's reason."""
    from pyroute2 import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        _refused(exc.code, action, exc)
        # NetlinkError's args are (errno, the kernel's text for it).
        text = exc.args[1] if len(exc.args) > 1 else str(exc)
        raise error(f"cannot {action}: {text} (netlink error {exc.code})") from exc
    except FileNotFoundError as exc:
        raise error(f"cannot {action}: network namespace does not exist") from exc
    except OSError as exc:
        _refused(exc.errno, action, exc)
        raise error(f"cannot {action}: {exc.strerror or exc}") from exc


def _refused(code: int | None, action: str, exc: Exception) -> None:
    """Unavailable naming CAP_NET_ADMIN if the kernel refused ``action`` for the want of it."""
    if code == errno.EPERM:
        missing = net_admin_missing("change routes", f"cannot {action}")
        if missing is not None:
            raise missing from exc


register(RouteKind())
