"""Facts the agent reports in its hello: what this host is.

:func:`gather` returns exactly the keys of :data:`protos.facts.FACT_KEYS`,
each a string, '' when not known. It runs at every session start, so each
fact is a file read, a syscall or one short subprocess; the one that may wait
on the network (the FQDN, through DNS) has a deadline.

Each fact that needs interpreting is split into the reading (``_read_*``) and
a pure function over what was read, which the tests feed recorded input:
:func:`parse_os_release` and :func:`os_facts`, :func:`default_route_devices`
and :func:`route_addresses`, :func:`virtualization`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import platform
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psutil

from protos.facts import FACT_KEYS

#: How long the hello waits for the FQDN before it reports the host name.
FQDN_TIMEOUT_S = 1.0
#: How long systemd-detect-virt may take before the files are read instead.
DETECT_VIRT_TIMEOUT_S = 1.0


def gather(
    agent_version: str,
    *,
    resolve_fqdn: Callable[[str], str] = socket.getfqdn,
    fqdn_timeout_s: float = FQDN_TIMEOUT_S,
) -> dict[str, str]:
    """This host's facts, by :data:`~protos.facts.FACT_KEYS` in their order.

    Takes milliseconds; at most ``fqdn_timeout_s`` longer when DNS does not
    answer, and then ``fqdn`` is the host name.
    """
    hostname = socket.gethostname()
    # Started first, so the DNS lookup runs while everything else is read.
    lookup = FqdnLookup(hostname, resolve_fqdn)
    deadline = time.monotonic() + fqdn_timeout_s
    observed = {
        "hostname": hostname,
        **os_facts(parse_os_release(_read_os_release())),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": str(os.cpu_count() or 0),
        "memory_bytes": str(psutil.virtual_memory().total),
        "addresses": default_route_addresses(),
        "virtualization": virtualization(read_virt_evidence()),
        "python": platform.python_version(),
        "agent_version": agent_version,
    }
    observed["fqdn"] = lookup.result(max(0.0, deadline - time.monotonic()))
    # The wire contract's keys, each one: a fact not observed above is '', unknown.
    return {key: observed.get(key, "") for key in FACT_KEYS}


# --- fqdn ----------------------------------------------------------------------


class FqdnLookup:
    """``resolve(hostname)`` in a daemon thread, so that a DNS server that does not
    answer (getfqdn can wait many seconds on one) delays no hello past a deadline.
    """

    def __init__(self, hostname: str, resolve: Callable[[str], str]) -> None:
        self._hostname = hostname
        self._found = ""
        self._done = threading.Event()
        # A daemon thread: one still stuck in the resolver must not keep the agent alive.
        thread = threading.Thread(target=self._run, args=(resolve,), name="plumb-fqdn", daemon=True)
        thread.start()

    def _run(self, resolve: Callable[[str], str]) -> None:
        try:
            self._found = resolve(self._hostname)
        except (OSError, UnicodeError):
            # getfqdn handles its own resolver errors; an IDNA name it cannot
            # encode, or another resolver, may not. The host name stands in.
            pass
        finally:
            self._done.set()

    def result(self, timeout_s: float) -> str:
        """The FQDN if resolved within ``timeout_s`` to a dotted name, else the host name."""
        if self._done.wait(timeout_s) and _qualified(self._found):
            return self._found
        return self._hostname


def _qualified(name: str) -> bool:
    # getfqdn answers "localhost" where /etc/hosts gives the host name the
    # address 127.0.0.1 (whose first name is localhost), and the bare host name
    # when no name has a dot: neither is more qualified than the host name.
    return "." in name and name != "localhost" and not name.startswith("localhost.")


# --- os-release ----------------------------------------------------------------

_OS_RELEASE_PATHS = (Path("/etc/os-release"), Path("/usr/lib/os-release"))

# The family of an os-release ID, or of one of its ID_LIKE names.
_FAMILIES: dict[str, str] = {
    **dict.fromkeys(("debian", "ubuntu", "raspbian"), "debian"),
    **dict.fromkeys(
        ("rhel", "centos", "fedora", "rocky", "almalinux", "ol", "amzn", "scientific"), "rhel"
    ),
    **dict.fromkeys(
        ("suse", "opensuse", "opensuse-leap", "opensuse-tumbleweed", "sles", "sled"), "suse"
    ),
    **dict.fromkeys(("arch", "archarm", "manjaro", "endeavouros"), "arch"),
}


def _read_os_release() -> str:
    # os-release(5): /etc/os-release, or /usr/lib/os-release where /etc has none.
    for path in _OS_RELEASE_PATHS:
        try:
            return path.read_text(errors="replace")
        except OSError:
            continue
    return ""


def parse_os_release(text: str) -> dict[str, str]:
    """The variables of an os-release file: shell-style ``KEY=value`` lines, quoted or not.

    A line that is not one (a comment, a bad quote) is left out rather than
    failing the hello.
    """
    release: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.strip().partition("=")
        if not sep or not key.isidentifier():
            continue
        try:
            release[key] = " ".join(shlex.split(raw, comments=True))
        except ValueError:
            continue
    return release


def os_facts(release: Mapping[str, str]) -> dict[str, str]:
    """``os``, ``os_version``, ``os.family`` and ``os.codename`` from os-release variables."""
    # os-release(5): ID defaults to "linux" when the file does not say.
    os_id = release.get("ID", "linux")
    return {
        "os": os_id,
        "os_version": release.get("VERSION_ID", ""),
        "os.family": os_family(os_id, release.get("ID_LIKE", "")),
        "os.codename": release.get("VERSION_CODENAME", ""),
    }


def os_family(os_id: str, id_like: str) -> str:
    """The first of ID, then the ID_LIKE names in their order, that names a known family."""
    for name in (os_id, *id_like.split()):
        if name in _FAMILIES:
            return _FAMILIES[name]
    return os_id


# --- addresses -----------------------------------------------------------------

_PROC_ROUTE = Path("/proc/net/route")
_PROC_IPV6_ROUTE = Path("/proc/net/ipv6_route")
_RTF_UP = 0x0001
_RTF_REJECT = 0x0200


def default_route_addresses() -> str:
    """The addresses of the interfaces the default routes leave by, comma-separated.

    Read from /proc/net and psutil rather than through pyroute2: importing
    pyroute2 costs the agent about 0.2 s and 20 MB at every start, for this one
    fact. What /proc shows is the main table for IPv4 (only the first hop of a
    multipath route) and every table for IPv6.
    """
    devices = default_route_devices(_read_text(_PROC_ROUTE), _read_text(_PROC_IPV6_ROUTE))
    if not devices:
        return ""
    found = psutil.net_if_addrs()
    return route_addresses(
        devices, {name: [a.address for a in found.get(name, [])] for name in devices}
    )


def default_route_devices(ipv4_routes: str, ipv6_routes: str) -> set[str]:
    """The devices of the usable default routes in /proc/net/route and /proc/net/ipv6_route."""
    devices: set[str] = set()
    # /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ..., a header first.
    for fields in (line.split() for line in ipv4_routes.splitlines()[1:]):
        if len(fields) >= 8 and fields[1] == fields[7] == "00000000":
            _add_if_usable(devices, fields[0], fields[3])
    # /proc/net/ipv6_route: dst dst_len src src_len next_hop metric refcnt use flags device.
    for fields in (line.split() for line in ipv6_routes.splitlines()):
        if len(fields) >= 10 and fields[1] == "00" and int(fields[0], 16) == 0:
            _add_if_usable(devices, fields[9], fields[8])
    return devices


def _add_if_usable(devices: set[str], device: str, flags: str) -> None:
    # An unreachable or prohibit default (RTF_REJECT) leads out of no interface.
    bits = int(flags, 16)
    if bits & _RTF_UP and not bits & _RTF_REJECT and device not in ("*", "lo"):
        devices.add(device)


def route_addresses(devices: Iterable[str], addresses: Mapping[str, Iterable[str]]) -> str:
    """The IPv4 and IPv6 addresses of ``devices`` but link-local ones: IPv4 first, sorted."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for device in devices:
        for text in addresses.get(device, ()):
            # psutil writes an IPv6 link-local address with its zone: fe80::1%eth0.
            try:
                address = ipaddress.ip_address(text.partition("%")[0])
            except ValueError:
                continue  # a MAC address (AF_PACKET), not an IP one
            if not address.is_link_local:
                found.add(address)
    return ",".join(str(a) for a in sorted(found, key=lambda a: (a.version, a)))


# --- virtualization --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VirtEvidence:
    """What says whether this host is a container or a virtual machine.

    ``detect_virt`` is systemd-detect-virt's answer, None when it is not
    installed or did not answer; the rest is read only then.
    """

    detect_virt: str | None = None
    #: /run/systemd/container, written by systemd-nspawn, lxc, podman and the like.
    container_file: str = ""
    #: /proc/1/environ (NUL-separated); often unreadable, then empty.
    pid1_environ: bytes = b""
    #: /.dockerenv and /run/.containerenv, which Docker and Podman create.
    dockerenv: bool = False
    containerenv: bool = False
    #: The CPU's flags line from /proc/cpuinfo.
    cpu_flags: str = ""
    #: /sys/class/dmi/id/sys_vendor and product_name.
    sys_vendor: str = ""
    product_name: str = ""


# A DMI sys_vendor or product_name prefix and the hypervisor it means, named
# as systemd-detect-virt names it. Checked only with the CPU's hypervisor flag
# set: "Microsoft Corporation" also makes Surface laptops.
_DMI_HYPERVISORS: tuple[tuple[str, str], ...] = (
    ("KVM", "kvm"),
    ("QEMU", "kvm"),
    ("VMware", "vmware"),
    ("Xen", "xen"),
    ("Microsoft Corporation", "microsoft"),
    ("innotek GmbH", "oracle"),
    ("Amazon EC2", "amazon"),
    ("Google", "google"),
)


def virtualization(evidence: VirtEvidence) -> str:
    """'none', or the container or hypervisor this host runs in; a container first."""
    if evidence.detect_virt:
        return evidence.detect_virt
    return _container(evidence) or _hypervisor(evidence) or "none"


def _container(evidence: VirtEvidence) -> str:
    if evidence.container_file.strip():
        return evidence.container_file.strip()
    for variable in evidence.pid1_environ.split(b"\0"):
        name, _, value = variable.partition(b"=")
        if name == b"container" and value:
            return value.decode(errors="replace")
    if evidence.dockerenv:
        return "docker"
    if evidence.containerenv:
        return "podman"
    return ""


def _hypervisor(evidence: VirtEvidence) -> str:
    if "hypervisor" not in evidence.cpu_flags.split():
        # Without the flag, QEMU is emulating the CPU (no KVM underneath).
        return "qemu" if evidence.sys_vendor.startswith("QEMU") else ""
    for field in (evidence.product_name, evidence.sys_vendor):
        for prefix, name in _DMI_HYPERVISORS:
            if field.startswith(prefix):
                return name
    return "vm-other"


def read_virt_evidence(detect_virt: str | None = "systemd-detect-virt") -> VirtEvidence:
    """What :func:`virtualization` decides from: ``detect_virt``'s answer if that
    program is installed (None: do not run it) and answers, else the files.
    """
    answer = _run_detect_virt(detect_virt) if detect_virt else None
    if answer:
        return VirtEvidence(detect_virt=answer)
    return VirtEvidence(
        container_file=_read_text(Path("/run/systemd/container")),
        pid1_environ=_read_bytes(Path("/proc/1/environ")),
        dockerenv=os.path.exists("/.dockerenv"),
        containerenv=os.path.exists("/run/.containerenv"),
        cpu_flags=_cpu_flags(),
        sys_vendor=_read_text(Path("/sys/class/dmi/id/sys_vendor")).strip(),
        product_name=_read_text(Path("/sys/class/dmi/id/product_name")).strip(),
    )


def _run_detect_virt(program: str) -> str | None:
    path = shutil.which(program)
    if path is None:
        return None
    try:
        # It exits 1 when it prints "none"; the answer is what it prints.
        done = subprocess.run(
            [path], capture_output=True, text=True, timeout=DETECT_VIRT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _cpu_flags() -> str:
    # The first CPU's flags are enough; a large machine lists hundreds of CPUs.
    try:
        with open("/proc/cpuinfo", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return line.partition(":")[2]
    except OSError:
        pass
    return ""


# --- reading ---------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
