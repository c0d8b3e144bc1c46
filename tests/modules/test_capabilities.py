"""The capability check of the network kinds: the pure parser on recorded /proc output,
then the firewall and route kinds run without CAP_NET_ADMIN in a namespace of the test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.capabilities import CAP_NET_ADMIN, effective, has, net_admin_missing
from modules.errors import Unavailable

REPO = Path(__file__).resolve().parents[2]

# /proc/self/status of a process in a systemd-nspawn container booted without
# --capability=CAP_NET_ADMIN (tests/hosts), around the capability lines.
CONTAINER_STATUS = """\
Name:\tcat
Umask:\t0022
State:\tR (running)
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
SigIgn:\t0000000000001000
SigCgt:\t0000000000000000
CapInh:\t0000000000000000
CapPrm:\t00000000fcecafff
CapEff:\t00000000fcecafff
CapBnd:\t00000000fcecafff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t2
"""
# The same container booted with --capability=CAP_NET_ADMIN.
GRANTED_STATUS = CONTAINER_STATUS.replace("fcecafff", "fcecbfff")
# Root on the test machine: every capability.
ROOT_STATUS = CONTAINER_STATUS.replace("00000000fcecafff", "000001ffffffffff")
# Permitted but not effective (a process that lowered its effective set): what counts
# for the kernel's check is the effective set.
LOWERED_STATUS = GRANTED_STATUS.replace("CapEff:\t00000000fcecbfff", "CapEff:\t00000000fcecafff")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (CONTAINER_STATUS, False),
        (GRANTED_STATUS, True),
        (ROOT_STATUS, True),
        (LOWERED_STATUS, False),
    ],
    ids=["container", "container-granted", "root", "permitted-not-effective"],
)
def test_net_admin_is_bit_12_of_the_effective_set(status: str, expected: bool) -> None:
    assert has(status, CAP_NET_ADMIN) is expected


def test_effective_parses_the_hex_mask() -> None:
    assert effective(CONTAINER_STATUS) == 0xFCECAFFF
    with pytest.raises(ValueError, match="no CapEff"):
        effective("Name:\tcat\nCapPrm:\t0000000000000000\n")
    with pytest.raises(ValueError):
        effective("CapEff:\tnot hex\n")


def test_the_error_names_the_capability_and_what_was_refused(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(CONTAINER_STATUS)
    error = net_admin_missing("change nftables", "cannot list table inet plumb", status)
    assert isinstance(error, Unavailable)
    assert str(error) == (
        "unavailable: CAP_NET_ADMIN is missing (the agent needs it to change nftables; "
        "running in a container without --capability=CAP_NET_ADMIN?): "
        "cannot list table inet plumb"
    )


def test_no_error_when_the_capability_is_held_or_cannot_be_told(tmp_path: Path) -> None:
    """Then the capability is not the reason, and the kernel's refusal is reported as it came."""
    status = tmp_path / "status"
    status.write_text(GRANTED_STATUS)
    assert net_admin_missing("change routes", "x", status) is None
    status.write_text("Name:\tcat\n")
    assert net_admin_missing("change routes", "x", status) is None
    assert net_admin_missing("change routes", "x", tmp_path / "missing") is None


# --- the kinds, really without the capability ------------------------------------

# Run in a child process that has no CAP_NET_ADMIN; prints what each step raised.
PROBE = """
import json, sys, threading
from modules import registry
from modules.base import Context
from modules.firewall import FirewallState
from modules.route import ABSENT_ROUTE

ctx = Context(netns=sys.argv[1])
firewall, route = registry.get("firewall"), registry.get("route")
table = firewall.parse({"table": "plumb", "chains": [{"name": "input"}]})
docs = route.parse({"destination": "198.51.100.0/24", "device": "lo"})
steps = {
    "firewall read": lambda: firewall.read(ctx, table),
    "firewall apply": lambda: firewall.apply(ctx, table, FirewallState(present=False), []),
    "firewall restore": lambda: firewall.restore(ctx, table, FirewallState(present=False)),
    # Blocks until nft monitor stops: only run where it is expected to fail.
    "firewall watch": lambda: firewall.watch(ctx, [table], lambda: None, threading.Event()),
    "route read": lambda: route.read(ctx, docs),
    "route apply": lambda: route.apply(ctx, docs, ABSENT_ROUTE, []),
    "route restore": lambda: route.restore(ctx, docs, ABSENT_ROUTE),
}
if sys.argv[2:] != ["watch"]:
    del steps["firewall watch"]
outcome = {}
for name, step in steps.items():
    try:
        step()
        outcome[name] = "ok"
    except Exception as exc:
        outcome[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(outcome))
"""

# setpriv keeps CAP_NET_ADMIN out of the bounding and inheritable sets, so the
# child (root, as the agent) execs without it, and so does nft under it.
WITHOUT_NET_ADMIN = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"plumb-caps-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def probe(netns: str, *prefix: str, watch: bool = False) -> dict[str, str]:
    result = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE, netns, *(["watch"] if watch else [])],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_without_cap_net_admin_both_kinds_name_it(netns: str) -> None:
    outcome = probe(netns, *WITHOUT_NET_ADMIN, watch=True)
    message = (
        "Unavailable: unavailable: CAP_NET_ADMIN is missing (the agent needs it to change {}; "
        "running in a container without --capability=CAP_NET_ADMIN?): "
    )
    nftables, routes = message.format("nftables"), message.format("routes")
    assert outcome == {
        "firewall read": nftables + "cannot list table inet plumb",
        "firewall apply": nftables + "cannot replace table inet plumb",
        "firewall restore": nftables + "cannot restore table inet plumb",
        "firewall watch": nftables + "nft monitor stopped (exit status 1)",
        # Reading routes needs no capability; changing them does.
        "route read": "ok",
        "route apply": routes
        + f"cannot replace route 198.51.100.0/24 metric 0 table 254 in netns {netns}",
        "route restore": routes
        + f"cannot restore route 198.51.100.0/24 metric 0 table 254 in netns {netns} to absent",
    }

    # Nothing was changed.
    def output(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    assert output("ip", "netns", "exec", netns, "nft", "list", "ruleset") == ""
    assert "198.51.100.0" not in output("ip", "-n", netns, "route")


def test_with_cap_net_admin_the_same_steps_work(netns: str) -> None:
    """The control: the capability, not anything else in the probe, made them fail."""
    outcome = probe(netns)
    assert set(outcome.values()) == {"ok"}, outcome
