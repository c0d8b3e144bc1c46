"""The ``firewall`` kind: the whole of one nftables table that Plumb owns.

Example manifest::

    - kind: firewall
      name: host-firewall
      spec:
        family: inet
        table: plumb
        chains:
          - name: input
            type: filter
            hook: input
            policy: drop
            rules:
              - {iif: lo, action: accept}
              - {ct_state: [established, related], action: accept}
              - {protocol: tcp, dport: 22, saddr: 192.0.2.0/24, counter: true, action: accept}
              - {protocol: udp, dport: "6000-6010", action: drop, comment: mosh}

Spec fields:

``family``
    ``inet`` (default), ``ip`` or ``ip6``.
``table``
    Required. The table's name. Plumb owns it: anything in it that the spec
    does not say is drift and is removed.
``state``
    ``present`` (default) or ``absent``. With ``absent`` only ``family`` and
    ``table`` may be given.
``chains``
    A list of chains, each with a ``name`` and ``rules``. A base chain also
    has ``type: filter``, a ``hook`` (``input``, ``forward``, ``output``), a
    ``priority`` (default 0) and a ``policy`` (``accept``, the default, or
    ``drop``); a chain without ``type`` and ``hook`` is a regular chain.
``rules``
    Each rule matches on any of: ``iif``/``oif`` (an interface that must exist
    when the rules are applied: nft resolves it to an index),
    ``iifname``/``oifname`` (matched by name, so it may not exist yet),
    ``saddr``/``daddr`` (an address or prefix, or a list of them, of one IP
    version), ``protocol`` (``tcp``, ``udp``, ``icmp``, ``icmpv6``),
    ``sport``/``dport`` (a port, a ``"lo-hi"`` range, or a list of them; need
    ``protocol: tcp`` or ``udp``), ``ct_state`` (a list of ``new``,
    ``established``, ``related``, ``invalid``); then ``counter`` and ``log``
    (booleans), a required ``action`` (``accept``, ``drop``, ``reject``) and
    an optional ``comment``.

Behaviour worth knowing: every apply replaces the whole table in one nft
transaction (``add table``, ``delete table``, then the table, its chains and
rules), so the kernel holds either the old table or the complete new one,
never a half-written one; other tables are never mentioned. Lists are kept as
nftables keeps them: sorted, and entries that overlap (or adjoin, in a list
with a range or prefix, which nft would merge) are refused so that what is
written reads back exactly. A rule read back in any form this kind would not
write itself is shown as ``unrecognised: <nft json>`` and replaced. The kind
is risky: :meth:`FirewallKind.restore` replays the listing a read kept, in one
transaction as well. :meth:`FirewallKind.watch` follows ``nft monitor``.
nftables needs CAP_NET_ADMIN even to list a table; an agent without it (a
container started without the capability) fails with ``unavailable:
CAP_NET_ADMIN is missing ...`` rather than nft's "you must be root".
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modules.base import Change, Context, Identity, Kind, Removable, Risky, Watchable
from modules.capabilities import net_admin_missing
from modules.errors import ApplyError, ModuleError, ReadError, SpecError, Unavailable
from modules.registry import register
from modules.spec import Field, Presence, SpecReader, describe

# nft names: a letter or underscore first, then a conservative character set.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
# Interface names: at most IFNAMSIZ - 1 bytes; '*' would make nft match a prefix.
_IFNAME = re.compile(r"[^\s/*\\\"']{1,15}")
_COMMENT_LIMIT = 128  # bytes nft keeps for a rule comment
_PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")
_PRIORITY_LIMIT = 2**31
# How long the watcher waits for ``nft monitor`` before looking at its stop event again.
_STOP_POLL_S = 0.2
# How nft words the kernel's EPERM (strerror), in every message that carries one.
_REFUSED = "Operation not permitted"


class Family(enum.StrEnum):
    INET = "inet"
    IP = "ip"
    IP6 = "ip6"


class Hook(enum.StrEnum):
    INPUT = "input"
    FORWARD = "forward"
    OUTPUT = "output"


class ChainType(enum.StrEnum):
    FILTER = "filter"


class Policy(enum.StrEnum):
    ACCEPT = "accept"
    DROP = "drop"


class Action(enum.StrEnum):
    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ICMPV6 = "icmpv6"


# In the kernel's bit order, which is the order nft lists them in.
CT_STATES = ("invalid", "established", "related", "new")
# nft's name for a protocol where it differs from ours.
_NFT_PROTOCOL = {"icmpv6": "ipv6-icmp"}
_INTERFACE_KEYS = ("iif", "oif", "iifname", "oifname")
_REJECT_TYPE = {Family.INET: "icmpx", Family.IP: "icmp", Family.IP6: "icmpv6"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule, normalised: what a spec says and what a listing shows compare equal.

    Lists are tuples in nft's order (sorted); ``unrecognised`` holds the nft
    JSON of an observed rule this kind would not have written.
    """

    action: str = "accept"
    iif: str | None = None
    oif: str | None = None
    iifname: str | None = None
    oifname: str | None = None
    saddr: tuple[str, ...] = ()
    daddr: tuple[str, ...] = ()
    protocol: str | None = None
    sport: tuple[str, ...] = ()
    dport: tuple[str, ...] = ()
    ct_state: tuple[str, ...] = ()
    counter: bool = False
    log: bool = False
    comment: str | None = None
    unrecognised: str | None = None

    def __str__(self) -> str:
        if self.unrecognised is not None:
            return f"unrecognised: {self.unrecognised}"
        words = [f"{key} {value}" for key in _INTERFACE_KEYS if (value := getattr(self, key))]
        words += [
            f"{key} {_listed(getattr(self, key))}"
            for key in ("saddr", "daddr")
            if getattr(self, key)
        ]
        words += [self.protocol] if self.protocol else []
        words += [
            f"{key} {_listed(getattr(self, key))}"
            for key in ("sport", "dport")
            if getattr(self, key)
        ]
        words += [f"ct state {','.join(self.ct_state)}"] if self.ct_state else []
        words += ["counter"] * self.counter + ["log"] * self.log + [self.action]
        words += [f"comment {json.dumps(self.comment)}"] if self.comment is not None else []
        return " ".join(words)


@dataclasses.dataclass(frozen=True)
class Chain:
    """A chain; a regular chain has None for ``type``, ``hook``, ``priority`` and ``policy``."""

    name: str
    type: str | None = None
    hook: str | None = None
    priority: int | None = None
    policy: str | None = None
    rules: tuple[Rule, ...] = ()

    def header(self) -> str:
        """The chain's kind, as a diff shows it."""
        if self.type is None:
            return "regular chain"
        return f"{self.type} hook {self.hook} priority {self.priority}"

    def summary(self) -> str:
        policy = f" policy {self.policy}" if self.policy else ""
        count = f"{len(self.rules)} rule{'' if len(self.rules) == 1 else 's'}"
        return f"{self.header()}{policy}, {count}"


@dataclasses.dataclass(frozen=True)
class FirewallSpec:
    """A parsed ``firewall`` spec."""

    table: str
    family: Family = Family.INET
    state: Presence = Presence.PRESENT
    chains: tuple[Chain, ...] = ()


@dataclasses.dataclass(frozen=True)
class FirewallState:
    """What :meth:`FirewallKind.read` saw of the owned table.

    ``extras`` names other objects in it (``set blocked``): nothing a spec
    says, so they are drift. ``raw`` is the nft JSON of every object in the
    table as listed (handles left out), so that :meth:`FirewallKind.restore`
    can put back even what this kind does not understand; it takes no part in
    comparisons, because counters in it change with traffic.
    """

    present: bool
    chains: tuple[Chain, ...] = ()
    extras: tuple[str, ...] = ()
    raw: str | None = dataclasses.field(default=None, compare=False, repr=False)


class FirewallKind(
    Kind[FirewallSpec, FirewallState],
    Risky[FirewallSpec, FirewallState],
    Watchable[FirewallSpec],
    Removable[FirewallSpec],
):
    """Manages one nftables table, all of it."""

    name = "firewall"
    # One nft transaction takes milliseconds: an nft still running after 30 s
    # is stuck, not slow.
    timeout_s = 30.0
    fields = (
        Field("table", "the nftables table Plumb owns (all of it)", required=True),
        Field("family", "inet (default), ip or ip6"),
        Field("state", "present (default) or absent (the table is deleted)"),
        Field("chains", "the table's chains: name, hook, type, priority, policy, rules"),
    )

    def parse(self, raw: Mapping[str, Any]) -> FirewallSpec:
        reader = _Reader(raw, self.fields)
        family = reader.choice("family", Family, default=Family.INET)
        table = _name(reader, "table")
        state = reader.choice("state", Presence, default=Presence.PRESENT)
        chains = tuple(_chain(child, family) for child in reader.readers("chains"))
        reader.finish()
        if state is Presence.ABSENT and chains:
            raise SpecError("chains", "not allowed with state: absent (the table is deleted)")
        _refuse_duplicates([chain.name for chain in chains], "chains", "chain")
        return FirewallSpec(table=table, family=family, state=state, chains=chains)

    def identities(self, spec: FirewallSpec) -> tuple[Identity, ...]:
        # nftables names a table by family and name: "inet plumb" and "ip plumb" are two.
        return (Identity("nftables table", f"{spec.family} {spec.table}"),)

    def removal(self, spec: FirewallSpec) -> dict[str, Any]:
        return {"family": spec.family.value, "table": spec.table, "state": "absent"}

    def read(self, ctx: Context, spec: FirewallSpec) -> FirewallState:
        command = ["nft", "-j", "list", "table", spec.family.value, spec.table]
        result = _run(ctx, command, input_text=None, failure=ReadError)
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return FirewallState(present=False)
            raise _failure(ReadError, f"cannot list table {_label(spec)}", result.stderr)
        try:
            listing = json.loads(result.stdout)
        except ValueError as exc:
            raise ReadError(f"nft printed no JSON for table {_label(spec)}", result.stdout) from exc
        return parse_listing(listing, spec.family, spec.table)

    def diff(self, spec: FirewallSpec, state: FirewallState) -> list[Change]:
        if spec.state is Presence.ABSENT:
            return [Change("state", "present", "absent")] if state.present else []
        if not state.present:
            chains = [Change(f"chains.{c.name}", "absent", c.summary()) for c in spec.chains]
            return [Change("state", "absent", "present"), *chains]
        extras = [Change(f"objects.{extra}", "present", "absent") for extra in state.extras]
        return _chains_diff(spec.chains, state.chains) + extras

    def apply(
        self, ctx: Context, spec: FirewallSpec, state: FirewallState, changes: list[Change]
    ) -> None:
        batch = json.dumps(render_batch(spec))
        result = _run(ctx, ["nft", "-j", "-f", "-"], input_text=batch, failure=ApplyError)
        if result.returncode != 0:
            verb = "delete" if spec.state is Presence.ABSENT else "replace"
            raise _failure(ApplyError, f"cannot {verb} table {_label(spec)}", result.stderr)

    def restore(self, ctx: Context, spec: FirewallSpec, snapshot: FirewallState) -> None:
        """Replace the table with ``snapshot`` (or delete it) in one nft transaction."""
        batch = json.dumps(render_restore(spec, snapshot))
        result = _run(ctx, ["nft", "-j", "-f", "-"], input_text=batch, failure=ApplyError)
        if result.returncode != 0:
            raise _failure(ApplyError, f"cannot restore table {_label(spec)}", result.stderr)

    def watch(
        self,
        ctx: Context,
        specs: Sequence[FirewallSpec],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Run ``nft monitor``; report each event line that names a managed table."""
        tables = {(spec.family.value, spec.table) for spec in specs}
        with _Monitor(ctx) as monitor:
            while not stop.is_set():
                lines = monitor.lines(_STOP_POLL_S)
                if any(_names_table(line, tables) for line in lines):
                    on_change()


# --- parse -------------------------------------------------------------------


class _Reader(SpecReader):
    """A SpecReader that also hands out a raw value, for fields that are "one or a list"."""

    def value(self, name: str) -> object | None:
        """The raw value of ``name``; None when not given (an explicit null is refused)."""
        value = self._take(name, required=False)
        if name not in self._raw:
            return None
        if value is None:
            raise self.error(name, "expected a value, got null")
        return value

    def readers(self, name: str) -> list[_Reader]:
        children = self.mappings(name)
        return [child for child in children if isinstance(child, _Reader)]

    def _child(self, raw: object, path: str) -> SpecReader:
        child = _Reader(raw, path=path)
        self._children.append(child)
        return child


def _name(reader: SpecReader, field: str) -> str:
    text = reader.string(field, required=True)
    if not _NAME.fullmatch(text):
        raise reader.error(
            field, f"expected a name of letters, digits, '_', '.', '-', got {text!r}"
        )
    return text


def _chain(reader: _Reader, family: Family) -> Chain:
    name = _name(reader, "name")
    kind = reader.string("type")
    hook = reader.string("hook")
    priority = reader.integer("priority")
    policy = reader.string("policy")
    rules = tuple(_rule(child, family) for child in reader.readers("rules"))
    if kind is None and hook is None:
        for field, value in (("priority", priority), ("policy", policy)):
            if value is not None:
                raise reader.error(field, "only a base chain (with type and hook) has one")
        return Chain(name=name, rules=rules)
    return Chain(
        name=name,
        type=_option(reader, "type", kind, ChainType),
        hook=_option(reader, "hook", hook, Hook),
        priority=_priority(reader, priority),
        policy=_option(reader, "policy", policy or Policy.ACCEPT.value, Policy),
        rules=rules,
    )


def _option(reader: SpecReader, field: str, value: str | None, options: type[enum.StrEnum]) -> str:
    allowed = ", ".join(member.value for member in options)
    if value is None:
        raise reader.error(field, f"required for a base chain (one of {allowed})")
    if value not in {member.value for member in options}:
        raise reader.error(field, f"expected one of {allowed}, got {value!r}")
    return value


def _priority(reader: SpecReader, priority: int | None) -> int:
    if priority is None:
        return 0
    if not -_PRIORITY_LIMIT <= priority < _PRIORITY_LIMIT:
        raise reader.error("priority", f"out of range (a 32-bit signed integer), got {priority}")
    return priority


def _rule(reader: _Reader, family: Family) -> Rule:
    # Read in the order the fields are documented, so the first error is the first field.
    iif, oif, iifname, oifname = (_interface(reader, key) for key in _INTERFACE_KEYS)
    saddr = _addresses(reader, "saddr", family)
    daddr = _addresses(reader, "daddr", family)
    protocol = _protocol(reader, family)
    return Rule(
        iif=iif,
        oif=oif,
        iifname=iifname,
        oifname=oifname,
        saddr=saddr,
        daddr=daddr,
        protocol=protocol,
        sport=_ports(reader, "sport", protocol),
        dport=_ports(reader, "dport", protocol),
        ct_state=_ct_state(reader),
        counter=reader.boolean("counter"),
        log=reader.boolean("log"),
        action=_option(reader, "action", reader.string("action", required=True), Action),
        comment=_comment(reader),
    )


def _interface(reader: SpecReader, field: str) -> str | None:
    text = reader.string(field)
    if text is not None and not _IFNAME.fullmatch(text):
        raise reader.error(field, f"expected an interface name of 1 to 15 characters, got {text!r}")
    return text


def _protocol(reader: SpecReader, family: Family) -> str | None:
    text = reader.string("protocol")
    if text is None:
        return None
    protocol = _option(reader, "protocol", text, Protocol)
    wrong = {Family.IP: "icmpv6", Family.IP6: "icmp"}.get(family)
    if protocol == wrong:
        raise reader.error("protocol", f"{protocol} is not carried by family {family}")
    return protocol


def _comment(reader: SpecReader) -> str | None:
    text = reader.string("comment")
    if text is not None and len(text.encode()) > _COMMENT_LIMIT:
        raise reader.error("comment", f"longer than nft's {_COMMENT_LIMIT} bytes")
    return text


def _ct_state(reader: _Reader) -> tuple[str, ...]:
    value = reader.value("ct_state")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise reader.error(
            "ct_state", f"expected a non-empty list of states, got {describe(value)}"
        )
    for item in value:
        if item not in CT_STATES:
            raise reader.error(
                "ct_state", f"expected states among {', '.join(CT_STATES)}, got {describe(item)}"
            )
    _refuse_duplicates(value, reader.field("ct_state"), "state")
    return tuple(state for state in CT_STATES if state in value)


def _refuse_duplicates(items: Sequence[object], field: str, noun: str) -> None:
    seen: set[object] = set()
    for item in items:
        if item in seen:
            raise SpecError(field, f"{noun} {item} is given twice")
        seen.add(item)


def _items(reader: _Reader, field: str) -> list[object]:
    value = reader.value(field)
    if value is None:
        return []
    if isinstance(value, list):
        if not value:
            raise reader.error(field, "expected at least one entry, got an empty list")
        return value
    return [value]


@dataclasses.dataclass(frozen=True)
class _Interval:
    """One list entry as the interval nft stores it, and how it is written."""

    low: int
    high: int
    text: str
    is_range: bool


def _normalised(reader: SpecReader, field: str, entries: list[_Interval]) -> tuple[str, ...]:
    """Entries sorted as nft lists them; overlaps refused, and adjoining ones
    when nft would merge them (a list with a range or prefix is an interval set).
    """
    ordered = sorted(entries, key=lambda entry: entry.low)
    merges = len(ordered) > 1 and any(entry.is_range for entry in ordered)
    for before, after in itertools.pairwise(ordered):
        if after.low <= before.high or (merges and after.low == before.high + 1):
            problem = "overlap" if after.low <= before.high else "adjoin"
            raise reader.error(
                field, f"{before.text} and {after.text} {problem}; write them as one entry"
            )
    return tuple(entry.text for entry in ordered)


def _ports(reader: _Reader, field: str, protocol: str | None) -> tuple[str, ...]:
    items = _items(reader, field)
    if not items:
        return ()
    if protocol not in ("tcp", "udp"):
        raise reader.error(field, "needs protocol: tcp or protocol: udp")
    return _normalised(reader, field, [_port(reader, field, item) for item in items])


def _port(reader: SpecReader, field: str, item: object) -> _Interval:
    expected = 'a port (1-65535) or a range such as "6000-6010"'
    if isinstance(item, int) and not isinstance(item, bool) and 1 <= item <= 65535:
        return _Interval(item, item, str(item), is_range=False)
    match = _PORT_RANGE.fullmatch(item) if isinstance(item, str) else None
    if match is None:
        raise reader.error(field, f"expected {expected}, got {describe(item)}")
    low, high = int(match[1]), int(match[2])
    if not 1 <= low < high <= 65535:
        raise reader.error(field, f"expected {expected} with low < high, got {item!r}")
    return _Interval(low, high, f"{low}-{high}", is_range=True)


def _addresses(reader: _Reader, field: str, family: Family) -> tuple[str, ...]:
    items = _items(reader, field)
    networks = [_network(reader, field, item) for item in items]
    versions = {network.version for network in networks}
    if len(versions) > 1:
        raise reader.error(field, "mixes IPv4 and IPv6; use one rule for each")
    wanted = {Family.IP: 4, Family.IP6: 6}.get(family)
    if wanted is not None and versions - {wanted}:
        raise reader.error(field, f"family {family} only carries IPv{wanted} addresses")
    entries = [
        _Interval(
            int(net.network_address),
            int(net.broadcast_address),
            _address_text(net),
            is_range=net.num_addresses > 1,
        )
        for net in networks
    ]
    return _normalised(reader, field, entries)


def _network(
    reader: SpecReader, field: str, item: object
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(item, str):
        raise reader.error(field, f"expected an address or prefix, got {describe(item)}")
    try:
        return ipaddress.ip_network(item)
    except ValueError as exc:
        raise reader.error(field, f"expected an address or prefix: {exc}") from None


def _address_text(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """An address alone for a single host (nft drops the /32 or /128), else the prefix."""
    return str(network.network_address) if network.num_addresses == 1 else str(network)


# --- nft JSON: render ------------------------------------------------------------


def render_batch(spec: FirewallSpec) -> dict[str, Any]:
    """The one nft transaction that makes the table what ``spec`` says.

    ``add table`` first so that ``delete table`` cannot fail on a missing one.
    """
    table = {"family": spec.family.value, "name": spec.table}
    commands: list[dict[str, Any]] = [{"add": {"table": table}}, {"delete": {"table": table}}]
    if spec.state is Presence.PRESENT:
        commands.append({"add": {"table": table}})
        commands += [{"add": {"chain": _render_chain(spec, chain)}} for chain in spec.chains]
        for chain in spec.chains:
            for rule in chain.rules:
                body = {"family": spec.family.value, "table": spec.table, "chain": chain.name}
                commands.append({"add": {"rule": body | _rule_body(rule, spec.family)}})
    return {"nftables": commands}


def render_restore(spec: FirewallSpec, snapshot: FirewallState) -> dict[str, Any]:
    """The one nft transaction that makes the table what ``snapshot`` observed.

    The listing kept in ``snapshot.raw`` is replayed object by object; without
    it (a state not made by :func:`parse_listing`) the parsed chains are
    written, which is faithful unless the table held other objects.
    """
    if not snapshot.present:
        return render_batch(dataclasses.replace(spec, state=Presence.ABSENT, chains=()))
    if snapshot.raw is None:
        if snapshot.extras:
            raise ApplyError(
                f"cannot restore table {_label(spec)}: the snapshot lacks its listing, "
                f"and {', '.join(snapshot.extras)} cannot be rebuilt without it"
            )
        present = dataclasses.replace(spec, state=Presence.PRESENT, chains=snapshot.chains)
        return render_batch(present)
    table = {"family": spec.family.value, "name": spec.table}
    commands: list[dict[str, Any]] = [{"add": {"table": table}}, {"delete": {"table": table}}]
    objects = json.loads(snapshot.raw)
    # Chains before anything that may jump to them, rules after every set and map they use.
    rank = {"table": 0, "chain": 1, "rule": 3}
    objects.sort(key=lambda item: rank.get(next(iter(item)), 2))
    return {"nftables": commands + [{"add": item} for item in objects]}


def _rule_body(rule: Rule, family: Family) -> dict[str, Any]:
    """What to write for a rule; an unrecognised one as it was listed."""
    if rule.unrecognised is not None:
        listed: dict[str, Any] = json.loads(rule.unrecognised)
        return listed
    return _render_rule(rule, family)


def _render_chain(spec: FirewallSpec, chain: Chain) -> dict[str, Any]:
    body: dict[str, Any] = {"family": spec.family.value, "table": spec.table, "name": chain.name}
    if chain.type is not None:
        body |= {"type": chain.type, "hook": chain.hook, "prio": chain.priority}
        body["policy"] = chain.policy
    return body


def _render_rule(rule: Rule, family: Family) -> dict[str, Any]:
    """The rule's ``expr`` (and ``comment``) exactly as ``nft -j list`` prints them."""
    expr = [
        _match({"meta": {"key": key}}, value)
        for key in _INTERFACE_KEYS
        if (value := getattr(rule, key))
    ]
    for field in ("saddr", "daddr"):
        if addresses := getattr(rule, field):
            ip = "ip6" if ":" in addresses[0] else "ip"
            expr.append(_match(_payload(ip, field), _elements(addresses, _address_json)))
    if rule.protocol and not (rule.sport or rule.dport):
        expr.append(
            _match({"meta": {"key": "l4proto"}}, _NFT_PROTOCOL.get(rule.protocol, rule.protocol))
        )
    for field in ("sport", "dport"):
        if ports := getattr(rule, field):
            expr.append(_match(_payload(rule.protocol or "", field), _elements(ports, _port_json)))
    if rule.ct_state:
        states = rule.ct_state[0] if len(rule.ct_state) == 1 else list(rule.ct_state)
        expr.append({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states}})
    expr += [{"counter": None}] * rule.counter + [{"log": None}] * rule.log
    expr.append({rule.action: _verdict_value(rule.action, family)})
    return {"expr": expr} | ({"comment": rule.comment} if rule.comment is not None else {})


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _elements(items: tuple[str, ...], convert: Any) -> Any:
    return convert(items[0]) if len(items) == 1 else {"set": [convert(item) for item in items]}


def _address_json(text: str) -> Any:
    if "/" not in text:
        return text
    address, length = text.split("/")
    return {"prefix": {"addr": address, "len": int(length)}}


def _port_json(text: str) -> Any:
    if "-" not in text:
        return int(text)
    low, high = text.split("-")
    return {"range": [int(low), int(high)]}


def _verdict_value(action: str, family: Family) -> Any:
    if action == "reject":
        return {"type": _REJECT_TYPE[family], "expr": "port-unreachable"}
    return None


# --- nft JSON: parse (pure) --------------------------------------------------------


class _Unrecognised(Exception):
    """An expression this kind never writes."""


def parse_listing(listing: Any, family: Family, table: str) -> FirewallState:
    """The normalised state of table ``family table`` in ``nft -j list`` output.

    Works on ``list table`` and ``list ruleset`` alike: objects of other
    tables are skipped.
    """
    items = listing.get("nftables", []) if isinstance(listing, dict) else []
    ours = [
        (kind, body)
        for item in items
        if isinstance(item, dict)
        for kind, body in item.items()
        if isinstance(body, dict) and _in_table(kind, body, family.value, table)
    ]
    if not any(kind == "table" for kind, _ in ours):
        return FirewallState(present=False)
    rules: dict[str, list[Rule]] = {}
    for kind, body in ours:
        if kind == "rule":
            rules.setdefault(str(body.get("chain")), []).append(parse_rule(body, family))
    chains = tuple(
        _parse_chain(body, tuple(rules.get(str(body.get("name")), [])))
        for kind, body in ours
        if kind == "chain"
    )
    extras = tuple(
        f"{kind} {body.get('name', '?')}" for kind, body in ours if kind not in _STRUCTURE
    )
    raw = [{kind: {k: v for k, v in body.items() if k != "handle"}} for kind, body in ours]
    return FirewallState(present=True, chains=chains, extras=extras, raw=json.dumps(raw))


_STRUCTURE = ("table", "chain", "rule")


def _in_table(kind: str, body: dict[str, Any], family: str, table: str) -> bool:
    name = body.get("name") if kind == "table" else body.get("table")
    return body.get("family") == family and name == table


def _parse_chain(body: dict[str, Any], rules: tuple[Rule, ...]) -> Chain:
    name = str(body.get("name"))
    if "hook" not in body:
        return Chain(name=name, rules=rules)
    return Chain(
        name=name,
        type=str(body.get("type")),
        hook=str(body.get("hook")),
        priority=body.get("prio"),
        policy=str(body.get("policy")),
        rules=rules,
    )


def parse_rule(body: dict[str, Any], family: Family) -> Rule:
    """A listed rule, normalised; ``unrecognised`` unless this kind would write it so.

    The check renders the parsed rule again and compares it with what nft
    listed (counter values aside), so no detail of the listing can be lost.
    """
    listed = {"expr": [_without_counts(item) for item in body.get("expr", [])]}
    if "comment" in body:
        listed["comment"] = body["comment"]
    try:
        rule = _rule_from(listed["expr"], listed.get("comment"))
        if _render_rule(rule, family) == listed:
            return rule
    except (_Unrecognised, KeyError, TypeError, ValueError, AttributeError, IndexError):
        pass
    return Rule(unrecognised=json.dumps(listed, sort_keys=True, separators=(",", ":")))


def _without_counts(item: Any) -> Any:
    return {"counter": None} if isinstance(item, dict) and "counter" in item else item


def _rule_from(expr: list[Any], comment: Any) -> Rule:
    fields: dict[str, Any] = {"comment": comment}
    for statement in expr:
        ((key, value),) = statement.items()
        if key == "match":
            fields.update(_match_fields(value))
        elif key in ("counter", "log"):
            fields[key] = True
        elif key in {action.value for action in Action}:
            fields["action"] = key
        else:
            raise _Unrecognised(key)
    return Rule(**fields)


def _match_fields(match: dict[str, Any]) -> dict[str, Any]:
    left, right = match["left"], match["right"]
    if "meta" in left:
        key = left["meta"]["key"]
        if key == "l4proto":
            return {"protocol": {v: k for k, v in _NFT_PROTOCOL.items()}.get(right, right)}
        return {key: right}
    if "payload" in left:
        protocol, field = left["payload"]["protocol"], left["payload"]["field"]
        values = right["set"] if isinstance(right, dict) and "set" in right else [right]
        if field in ("sport", "dport"):
            return {"protocol": protocol, field: tuple(_port_text(v) for v in values)}
        return {field: tuple(_address_text_json(v) for v in values)}
    if "ct" in left:
        return {"ct_state": tuple(right) if isinstance(right, list) else (right,)}
    raise _Unrecognised(str(left))


def _port_text(value: Any) -> str:
    if isinstance(value, dict):
        low, high = value["range"]
        return f"{low}-{high}"
    return str(value)


def _address_text_json(value: Any) -> str:
    if isinstance(value, dict):
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    return str(value)


# --- diff (pure) ---------------------------------------------------------------


def _chains_diff(desired: tuple[Chain, ...], observed: tuple[Chain, ...]) -> list[Change]:
    have = {chain.name: chain for chain in observed}
    want = {chain.name: chain for chain in desired}
    changes = [
        Change(f"chains.{name}", have[name].summary(), "absent")
        for name in have
        if name not in want
    ]
    for chain in desired:
        if chain.name not in have:
            changes.append(Change(f"chains.{chain.name}", "absent", chain.summary()))
        else:
            changes += _chain_diff(chain, have[chain.name])
    return changes


def _chain_diff(desired: Chain, observed: Chain) -> list[Change]:
    field = f"chains.{desired.name}"
    changes = []
    if desired.header() != observed.header():
        changes.append(Change(f"{field}.type", observed.header(), desired.header()))
    if desired.policy != observed.policy:
        changes.append(Change(f"{field}.policy", str(observed.policy), str(desired.policy)))
    return changes + _rules_diff(f"{field}.rules", desired.rules, observed.rules)


def _rules_diff(field: str, desired: tuple[Rule, ...], observed: tuple[Rule, ...]) -> list[Change]:
    """Rules added, removed or changed, numbered from 0 as in the spec's ``rules.N``."""
    matcher = difflib.SequenceMatcher(a=observed, b=desired, autojunk=False)
    changes: list[Change] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1)
        for k in range(paired):
            old, new = observed[i1 + k], desired[j1 + k]
            changes.append(Change(field, f"rule {i1 + k}: {old}", f"rule {j1 + k} changed: {new}"))
        for i in range(i1 + paired, i2):
            changes.append(Change(field, f"rule {i}: {observed[i]}", f"rule {i} removed"))
        for j in range(j1 + paired, j2):
            changes.append(Change(field, "absent", f"rule {j} added: {desired[j]}"))
    return changes


def _listed(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else "{" + ", ".join(items) + "}"


# --- running nft -----------------------------------------------------------------


def _run(
    ctx: Context,
    command: list[str],
    *,
    input_text: str | None,
    failure: type[ReadError | ApplyError],
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in the context's network namespace; Unavailable without nft or ip."""
    return ctx.run(_in_netns(ctx, command), input=input_text, failure=failure)


def _in_netns(ctx: Context, command: list[str]) -> list[str]:
    return command if ctx.netns is None else ["ip", "netns", "exec", ctx.netns, *command]


def _failure(failure: type[ReadError | ApplyError], action: str, output: str) -> ModuleError:
    """The error for nft having failed at ``action``, printing ``output``.

    nft reports every refusal by the kernel as "Operation not permitted (you
    must be root)", also to root; without CAP_NET_ADMIN the error says that instead.
    """
    if _REFUSED in output:
        missing = net_admin_missing("change nftables", action)
        if missing is not None:
            return missing
    return failure(action, output)


class _Monitor:
    """``nft monitor`` as a child process, its output read in whole lines.

    stderr goes into stdout: nft's warnings are ignored like other lines, and
    a pipe nobody reads cannot fill up and stall nft.
    """

    def __init__(self, ctx: Context) -> None:
        if shutil.which("nft") is None:
            raise Unavailable("nft not found")
        self._child = ctx.spawn(_in_netns(ctx, ["nft", "monitor"]), failure=ReadError)
        self._pending = b""
        self._seen: list[str] = []

    def __enter__(self) -> _Monitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._child.close()

    def lines(self, timeout: float) -> list[str]:
        """The complete lines printed within ``timeout`` seconds (often none)."""
        fd = self._child.stdout_fd
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return []
        # os.read, not a buffered read, which could wait for more than is there.
        chunk = os.read(fd, 65536)
        if not chunk:
            code = self._child.wait()
            output = "\n".join([*self._seen, self._pending.decode(errors="replace")])
            raise _failure(ReadError, f"nft monitor stopped (exit status {code})", output)
        *complete, self._pending = (self._pending + chunk).split(b"\n")
        lines = [line.decode(errors="replace") for line in complete]
        self._seen = (self._seen + lines)[-5:]
        return lines


def _names_table(line: str, tables: set[tuple[str, str]]) -> bool:
    """Whether a monitor line (``add rule inet plumb input ...``) names one of ``tables``."""
    words = line.split()
    return any(pair in tables for pair in itertools.pairwise(words))


def _label(spec: FirewallSpec) -> str:
    return f"{spec.family} {spec.table}"


register(FirewallKind())
