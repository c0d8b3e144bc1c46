"""A small network of hosts in network namespaces, for tests that change firewalls and routes.

    ┌──────────── switch namespace: bridge br0 ─────────────┐
    │        veth             veth              veth        │
    └─────────┼────────────────┼─────────────────┼──────────┘
         server ns         host ns 1  ...    host ns N
        192.0.2.1/24      192.0.2.11/24     192.0.2.1N/24

Everything lives in namespaces this lab creates, including the bridge (in a
namespace of its own), so nothing is added to the machine's own network.
Addresses are from TEST-NET-1 (RFC 5737). :meth:`close` deletes every
namespace, which deletes their interfaces too.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.integration.harness import Server

SUBNET = "192.0.2"
SERVER_IP = f"{SUBNET}.1"
_counter = itertools.count()


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class NetLab:
    def __init__(self, hosts: Sequence[str]) -> None:
        tag = f"{os.getpid()}-{next(_counter)}"
        self.switch = f"plumb-sw-{tag}"
        self.server = f"plumb-srv-{tag}"
        self.hosts = {name: f"plumb-{name}-{tag}" for name in hosts}
        self.addresses = {self.server: SERVER_IP}
        self.addresses.update(
            {ns: f"{SUBNET}.{11 + i}" for i, ns in enumerate(self.hosts.values())}
        )
        self._made: list[str] = []
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def _build(self) -> None:
        self._namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for index, (ns, address) in enumerate(self.addresses.items()):
            self._namespace(ns)
            self._plug(ns, address, index)

    def _namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _plug(self, ns: str, address: str, index: int) -> None:
        port = f"p{index}"
        ip(
            "-n",
            self.switch,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def served(self, data_dir: Path) -> Iterator[Server]:
        """A started server in the lab's server namespace, stopped when the caller is done."""
        server = Server(data_dir, netns=self.server, host=SERVER_IP)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def close(self) -> None:
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self._made.clear()
