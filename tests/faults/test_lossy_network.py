"""A lossy network between agent and server: nothing lost, duplicated or reordered.

The server runs in a network namespace of its own and the agent in another,
joined by a bridge (tests/integration/netlab.py). nftables in the server's
namespace drops 5 % of the packets each way at random (``numgen random``):
TCP retransmits, gRPC's keepalives may give up on the connection, the agent
reconnects and resends what was not acknowledged. The kernel here has no
netem, so delay is not injected; loss is what makes streams break.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.figures import assert_nothing_lost, figures, produced, stored
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, wait_for
from tests.integration.netlab import NetLab

MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /etc/motd, content: "hi\\n"}}
"""
#: One packet in twenty, each way.
LOSS = """\
table inet plumb_loss {
  chain input { type filter hook input priority 0; iifname "eth0" numgen random mod 20 0 drop; }
  chain output { type filter hook output priority 0; oifname "eth0" numgen random mod 20 0 drop; }
}
"""
RUNS_UNDER_LOSS = 15


def nft(namespace: str, *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", *args],
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab(["edge"]) as network:
        yield network


@pytest.fixture
def lossy(lab: NetLab, tmp_path: Path) -> Iterator[tuple[Server, Agent]]:
    served = lab.served(tmp_path / "server")
    server = next(served)
    agent = Agent("edge-1", tmp_path / "agents", netns=lab.hosts["edge"])
    try:
        enrolled = agent.enroll(server, server.token(names=["edge-1"]))
        assert enrolled.returncode == 0, enrolled.stderr
        (agent.root / "etc").mkdir()
        server.push(write(tmp_path / "motd.yaml", MOTD))
        agent.start(1.0)
        wait_for(lambda: stored(server), what="the first report")
        yield server, agent
    finally:
        agent.stop()
        served.close()  # stops the server


def test_five_percent_loss_each_way(lab: NetLab, lossy: tuple[Server, Agent]) -> None:
    server, agent = lossy
    nft(lab.server, "-f", "-", stdin=LOSS)
    before = produced(agent)
    under_loss = before + RUNS_UNDER_LOSS
    wait_for(lambda: produced(agent) >= under_loss, 90, f"{RUNS_UNDER_LOSS} runs under loss")
    nft(lab.server, "delete", "table", "inet", "plumb_loss")
    assert_nothing_lost(figures("5 % packet loss each way", server, agent))
