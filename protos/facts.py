"""The facts an agent reports in its hello (``Hello.facts``), by key.

Part of the wire contract: the agent gathers them (agent/facts.py), the
server shows them and targets by them (server/targeting.py). Only these keys
can select a node in a target; whatever else a hello carries is shown, never
used to choose what a node is given — an agent says what its facts are, so a
made-up key must not be able to pick a catalog (and its secrets). Labels,
which the server assigns, cannot take these names.
"""

from __future__ import annotations

#: Each key and what it holds; values are strings, '' when not known.
FACTS: dict[str, str] = {
    "hostname": "the host name (gethostname)",
    "fqdn": "the fully qualified domain name, or the host name",
    "os": "ID from /etc/os-release: debian, ubuntu, rocky, ...",
    "os_version": "VERSION_ID from /etc/os-release: 12, 24.04, 9.4, ...",
    "os.family": "debian, rhel, suse, arch, or the os itself",
    "os.codename": "VERSION_CODENAME from /etc/os-release: bookworm, trixie, ...",
    "kernel": "the kernel release (uname -r)",
    "arch": "the machine (uname -m): x86_64, aarch64, ...",
    "cpus": "how many CPUs",
    "memory_bytes": "total memory in bytes",
    "addresses": "the addresses of the default route's interfaces, comma-separated",
    "virtualization": "none, kvm, qemu, vmware, xen, systemd-nspawn, lxc, docker, ...",
    "python": "the agent's Python version",
    "agent_version": "the agent's version",
}

FACT_KEYS: tuple[str, ...] = tuple(FACTS)

#: Facts that hold several comma-separated values: a selector's value matches any one.
LIST_FACTS: frozenset[str] = frozenset({"addresses"})
