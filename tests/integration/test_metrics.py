"""The Prometheus endpoint, scraped for real and checked against what the fleet did."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, reported, wait_for

MOTD = """\
name: motd
target: all
resources:
  - kind: file
    name: motd
    spec: {path: /etc/motd, content: "managed\\n"}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """A server whose server.toml turns the endpoint on, on a loopback port."""
    server = Server(tmp_path / "server")
    address = f"127.0.0.1:{free_port()}"
    config = server.data_dir / "server.toml"
    text = config.read_text()
    assert 'metrics_listen = ""' in text  # off unless asked
    config.write_text(text.replace('metrics_listen = ""', f'metrics_listen = "{address}"'))
    server.start()
    try:
        yield server, f"http://{address}/metrics"
    finally:
        server.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_metrics_say_what_the_fleet_did(
    metered: tuple[Server, str], tmp_path: Path, make_agent: Callable[[str], Agent]
) -> None:
    server, url = metered
    before = scrape(url)
    assert before[("plumb_agents_connected", ())] == 0
    assert before[("plumb_reports_received_total", ())] == 0

    agent = make_agent("web-1")
    assert agent.enroll(server, server.token(names=["web-1"])).returncode == 0
    (agent.root / "etc").mkdir()
    agent.start()
    wait_for(lambda: server.nodes()["web-1"]["connected"], what="the session")
    pushed = server.cli_json("push", str(write(tmp_path / "motd.yaml", MOTD)))
    assert pushed["delivered"] == ["web-1"]
    reported(server, pushed["revision"], "web-1")
    agent.path("/etc/motd").write_text("edited\n")  # drift, repaired by the watcher
    wait_for(lambda: server.cli_json("drift")["events"], what="the drift event")
    runs = len(server.cli_json("runs", "web-1")["runs"])

    found = wait_for(
        lambda: (m := scrape(url))[("plumb_reports_received_total", ())] == runs and m,
        what="the reports counted",
    )
    assert found[("plumb_agents_connected", ())] == 1
    assert found[("plumb_nodes", (("state", "connected"),))] == 1
    assert found[("plumb_nodes", (("state", "no_report"),))] == 0
    assert found[("plumb_revision", ())] == pushed["revision"]
    assert found[("plumb_compliance_ratio", (("waivers", "excluded"),))] == 1.0
    assert found[("plumb_resources", (("state", "repaired"),))] == 1
    drift = len(server.cli_json("drift")["events"])
    assert found[("plumb_drift_events_total", ())] == drift == 1
    # One catalog sent and acknowledged: one latency, as long as it took.
    assert found[("plumb_push_applied_seconds_count", ())] == 1
    assert 0 < found[("plumb_push_applied_seconds_sum", ())] < 5
