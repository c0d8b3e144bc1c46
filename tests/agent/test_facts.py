"""The facts of a hello: every key of the contract, the pure parsers on recorded
input, the FQDN's deadline, and addresses read from a network namespace of our own.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.facts import (
    VirtEvidence,
    default_route_devices,
    gather,
    os_facts,
    parse_os_release,
    read_virt_evidence,
    route_addresses,
    virtualization,
)
from protos.facts import FACT_KEYS

ROOT = Path(__file__).resolve().parents[2]


def resolved_as(name: str) -> Callable[[str], str]:
    return lambda _hostname: name


# --- every key -------------------------------------------------------------------


def test_gather_returns_exactly_the_contract_keys_as_strings() -> None:
    found = gather("9.9.9", resolve_fqdn=resolved_as("web1.example.org"))
    assert tuple(found) == FACT_KEYS
    assert all(isinstance(value, str) for value in found.values())
    assert found["agent_version"] == "9.9.9"
    assert found["fqdn"] == "web1.example.org"


def test_facts_every_linux_host_has_are_not_empty() -> None:
    # A key gathered under a misspelt name would be '' here. The codename
    # (none on Rocky or Arch) and the addresses (no default route) may be.
    found = gather("1.0")
    maybe_empty = {"os.codename", "addresses"}
    assert {key for key in FACT_KEYS if key not in maybe_empty and not found[key]} == set()


# --- os-release --------------------------------------------------------------------

DEBIAN_12 = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""

DEBIAN_13 = """\
PRETTY_NAME="Debian GNU/Linux 13 (trixie)"
NAME="Debian GNU/Linux"
VERSION_ID="13"
VERSION="13 (trixie)"
VERSION_CODENAME=trixie
DEBIAN_VERSION_FULL=13.1
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""

UBUNTU_2404 = """\
PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.1 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
UBUNTU_CODENAME=noble
LOGO=ubuntu-logo
"""

ROCKY_9 = """\
NAME="Rocky Linux"
VERSION="9.4 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"
ANSI_COLOR="0;32"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:rocky:rocky:9::baseos"
HOME_URL="https://rockylinux.org/"
BUG_REPORT_URL="https://bugs.rockylinux.org/"
SUPPORT_END="2032-05-31"
ROCKY_SUPPORT_PRODUCT="Rocky-Linux-9"
ROCKY_SUPPORT_PRODUCT_VERSION="9.4"
REDHAT_SUPPORT_PRODUCT="Rocky Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
"""

ALMALINUX_9 = """\
NAME="AlmaLinux"
VERSION="9.4 (Seafoam Ocelot)"
ID="almalinux"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="AlmaLinux 9.4 (Seafoam Ocelot)"
ANSI_COLOR="0;34"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:almalinux:almalinux:9::baseos"
HOME_URL="https://almalinux.org/"
DOCUMENTATION_URL="https://wiki.almalinux.org/"
BUG_REPORT_URL="https://bugs.almalinux.org/"

ALMALINUX_MANTISBT_PROJECT="AlmaLinux-9"
ALMALINUX_MANTISBT_PROJECT_VERSION="9.4"
REDHAT_SUPPORT_PRODUCT="AlmaLinux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
SUPPORT_END=2032-06-01
"""

OPENSUSE_LEAP_15 = """\
NAME="openSUSE Leap"
VERSION="15.6"
ID="opensuse-leap"
ID_LIKE="suse opensuse"
VERSION_ID="15.6"
PRETTY_NAME="openSUSE Leap 15.6"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:opensuse:leap:15.6"
BUG_REPORT_URL="https://bugs.opensuse.org"
HOME_URL="https://www.opensuse.org/"
DOCUMENTATION_URL="https://en.opensuse.org/Portal:Leap"
LOGO="distributor-logo-Leap"
"""

ARCH = """\
NAME="Arch Linux"
PRETTY_NAME="Arch Linux"
ID=arch
BUILD_ID=rolling
ANSI_COLOR="38;2;23;147;209"
HOME_URL="https://archlinux.org/"
DOCUMENTATION_URL="https://wiki.archlinux.org/"
SUPPORT_URL="https://bbs.archlinux.org/"
BUG_REPORT_URL="https://gitlab.archlinux.org/groups/archlinux/-/issues"
PRIVACY_POLICY_URL="https://terms.archlinux.org/docs/privacy-policy/"
LOGO=archlinux-logo
"""

# The shell syntax os-release(5) allows beyond plain KEY="value" lines.
QUOTING = """\
# a comment, then a blank line

ID='gentoo'
VERSION_ID="2.15"   # a trailing comment
VERSION_CODENAME="say \\"hi\\""
not a variable line
BROKEN="unterminated
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(DEBIAN_12, ("debian", "12", "debian", "bookworm"), id="debian-12"),
        pytest.param(DEBIAN_13, ("debian", "13", "debian", "trixie"), id="debian-13"),
        pytest.param(UBUNTU_2404, ("ubuntu", "24.04", "debian", "noble"), id="ubuntu-24.04"),
        pytest.param(ROCKY_9, ("rocky", "9.4", "rhel", ""), id="rocky-9"),
        pytest.param(ALMALINUX_9, ("almalinux", "9.4", "rhel", ""), id="almalinux-9"),
        pytest.param(OPENSUSE_LEAP_15, ("opensuse-leap", "15.6", "suse", ""), id="opensuse-leap"),
        pytest.param(ARCH, ("arch", "", "arch", ""), id="arch"),
        pytest.param(QUOTING, ("gentoo", "2.15", "gentoo", 'say "hi"'), id="quoting"),
        pytest.param("", ("linux", "", "linux", ""), id="empty"),
    ],
)
def test_os_facts_from_os_release(text: str, expected: tuple[str, str, str, str]) -> None:
    found = os_facts(parse_os_release(text))
    assert (found["os"], found["os_version"], found["os.family"], found["os.codename"]) == expected


# --- fqdn --------------------------------------------------------------------------


class BlockedResolver:
    """A resolver that does not answer until the test releases it, as a DNS
    server that does not answer makes getfqdn wait.
    """

    def __init__(self) -> None:
        self.called = threading.Event()
        self.release = threading.Event()
        self.answered = threading.Event()

    def __call__(self, hostname: str) -> str:
        self.called.set()
        self.release.wait()
        self.answered.set()
        return f"{hostname}.late.example.org"


@pytest.fixture
def blocked() -> Iterator[BlockedResolver]:
    resolver = BlockedResolver()
    yield resolver
    resolver.release.set()
    for thread in threading.enumerate():
        if thread.name == "plumb-fqdn":
            thread.join(timeout=10)


def test_fqdn_that_does_not_resolve_in_time_is_the_host_name(blocked: BlockedResolver) -> None:
    found: dict[str, str] = {}
    returned = threading.Event()

    def hello() -> None:
        found.update(gather("1.0", resolve_fqdn=blocked, fqdn_timeout_s=0.05))
        returned.set()

    threading.Thread(target=hello, daemon=True).start()
    # A gather that waited for DNS would still be waiting when this gives up.
    assert returned.wait(timeout=10)
    assert blocked.called.is_set()
    assert not blocked.answered.is_set()
    assert found["fqdn"] == found["hostname"]
    assert tuple(found) == FACT_KEYS


def refuses(_hostname: str) -> str:
    raise OSError("no resolver")


@pytest.mark.parametrize(
    ("resolve", "expected"),
    [
        pytest.param(resolved_as("web1.example.org"), "web1.example.org", id="dotted"),
        # What getfqdn answers where /etc/hosts puts the host name on 127.0.0.1.
        pytest.param(resolved_as("localhost"), None, id="localhost"),
        pytest.param(resolved_as("localhost.localdomain"), None, id="localhost.localdomain"),
        pytest.param(resolved_as("other"), None, id="undotted"),
        pytest.param(resolved_as(""), None, id="empty"),
        pytest.param(refuses, None, id="raises"),
    ],
)
def test_fqdn_answer(resolve: Callable[[str], str], expected: str | None) -> None:
    found = gather("1.0", resolve_fqdn=resolve, fqdn_timeout_s=10)
    assert found["fqdn"] == (expected or found["hostname"])


# --- addresses: /proc/net as recorded ------------------------------------------------

PROC_ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t0000000A\t010200C0\t0003\t0\t0\t0\t000000FF\t0\t0\t0
*\t00000000\t00000000\t0201\t0\t0\t0\t00000000\t0\t0\t0
"""

Z = "0" * 32
PROC_IPV6_ROUTE = f"""\
fd000000000000000000000000000000 40 {Z} 00 {Z} 00000100 00000001 00000000 00000001     eth0
{Z} 00 {Z} 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     wg0
{Z} 00 {Z} 00 {Z} ffffffff 00000001 00000000 00200200       lo
fe800000000000000000000000000000 40 {Z} 00 {Z} 00000100 00000002 00000000 00000001     eth2
"""


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "expected"),
    [
        # eth1 carries 10/8 only; the unreachable defaults (v4 "*", v6 lo) lead nowhere.
        pytest.param(PROC_ROUTE, PROC_IPV6_ROUTE, {"eth0", "wg0"}, id="both"),
        pytest.param(PROC_ROUTE, "", {"eth0"}, id="no ipv6"),
        pytest.param(PROC_ROUTE.splitlines()[0], PROC_IPV6_ROUTE, {"wg0"}, id="no ipv4 default"),
        pytest.param("", "", set(), id="nothing"),
    ],
)
def test_default_route_devices(ipv4: str, ipv6: str, expected: set[str]) -> None:
    assert default_route_devices(ipv4, ipv6) == expected


def test_route_addresses_drop_link_local_and_sort() -> None:
    addresses = {
        "eth0": ["02:fc:00:00:00:01", "192.0.2.20", "fe80::1%eth0", "2001:db8::2", "169.254.3.3"],
        "wg0": ["10.9.0.1", "2001:db8::10", "192.0.2.3"],
        "eth1": ["198.51.100.1"],
    }
    found = route_addresses(["wg0", "eth0", "gone"], addresses)
    assert found == "10.9.0.1,192.0.2.3,192.0.2.20,2001:db8::2,2001:db8::10"


# --- addresses: a network namespace of our own -----------------------------------------


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace: veth0 with TEST-NET and link-local addresses, veth1 with others; no routes."""
    name = f"plumbfacts-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        for device in ("veth0", "veth1"):
            ip(name, "link", "set", device, "up")
        ip(name, "address", "add", "192.0.2.10/24", "dev", "veth0")
        ip(name, "address", "add", "169.254.10.10/16", "dev", "veth0")
        ip(name, "-6", "address", "add", "2001:db8::10/64", "dev", "veth0", "nodad")
        ip(name, "-6", "address", "add", "fe80::10/64", "dev", "veth0", "nodad")
        ip(name, "address", "add", "198.51.100.7/24", "dev", "veth1")
        ip(name, "-6", "address", "add", "2001:db8:1::7/64", "dev", "veth1", "nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def gather_in(netns: str) -> dict[str, str]:
    code = "import json; from agent.facts import gather; print(json.dumps(gather('1.0')))"
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found: dict[str, str] = json.loads(done.stdout)
    return found


def test_addresses_are_those_of_the_default_routes_interface(netns: str) -> None:
    ip(netns, "route", "add", "default", "via", "192.0.2.1", "dev", "veth0")
    ip(netns, "-6", "route", "add", "default", "via", "2001:db8::1", "dev", "veth0")
    assert gather_in(netns)["addresses"] == "192.0.2.10,2001:db8::10"


def test_no_default_route_no_addresses(netns: str) -> None:
    assert gather_in(netns)["addresses"] == ""


# --- virtualization ----------------------------------------------------------------------

HV = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr hypervisor lahf_lm"
METAL = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr lahf_lm"


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        pytest.param(VirtEvidence(detect_virt="kvm", dockerenv=True), "kvm", id="detect-virt"),
        pytest.param(VirtEvidence(detect_virt="none", cpu_flags=HV), "none", id="detect-virt none"),
        pytest.param(
            VirtEvidence(container_file="systemd-nspawn\n", cpu_flags=HV, sys_vendor="QEMU"),
            "systemd-nspawn",
            id="container file before the VM",
        ),
        pytest.param(
            VirtEvidence(pid1_environ=b"PATH=/bin\0container=lxc\0TERM=linux\0"),
            "lxc",
            id="pid 1 environ",
        ),
        pytest.param(VirtEvidence(dockerenv=True), "docker", id="dockerenv"),
        pytest.param(VirtEvidence(containerenv=True), "podman", id="containerenv"),
        pytest.param(
            VirtEvidence(cpu_flags=HV, sys_vendor="QEMU", product_name="Standard PC (Q35 + ICH9)"),
            "kvm",
            id="qemu with kvm",
        ),
        pytest.param(
            VirtEvidence(cpu_flags=METAL, sys_vendor="QEMU", product_name="Standard PC (i440FX)"),
            "qemu",
            id="qemu emulating",
        ),
        pytest.param(
            VirtEvidence(
                cpu_flags=HV, sys_vendor="VMware, Inc.", product_name="VMware Virtual Platform"
            ),
            "vmware",
            id="vmware",
        ),
        pytest.param(
            VirtEvidence(cpu_flags=HV, sys_vendor="Xen", product_name="HVM domU"), "xen", id="xen"
        ),
        pytest.param(
            VirtEvidence(
                cpu_flags=HV, sys_vendor="Microsoft Corporation", product_name="Virtual Machine"
            ),
            "microsoft",
            id="hyper-v",
        ),
        pytest.param(
            VirtEvidence(
                cpu_flags=METAL, sys_vendor="Microsoft Corporation", product_name="Surface"
            ),
            "none",
            id="surface laptop",
        ),
        pytest.param(
            VirtEvidence(cpu_flags=HV, sys_vendor="Example", product_name="Box"),
            "vm-other",
            id="unknown hypervisor",
        ),
        pytest.param(
            VirtEvidence(cpu_flags=METAL, sys_vendor="Dell Inc.", product_name="PowerEdge R650"),
            "none",
            id="bare metal",
        ),
        pytest.param(VirtEvidence(), "none", id="nothing readable"),
    ],
)
def test_virtualization(evidence: VirtEvidence, expected: str) -> None:
    assert virtualization(evidence) == expected


def test_virtualization_on_this_machine_is_known() -> None:
    assert gather("1.0")["virtualization"] != ""
    # The files alone, as on a host without systemd-detect-virt, say something too.
    assert virtualization(read_virt_evidence(detect_virt=None)) != ""
