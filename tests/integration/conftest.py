from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Agent, Server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "server")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Callable[[str], Agent]]:
    agents: list[Agent] = []

    def make(name: str) -> Agent:
        agent = Agent(name, tmp_path / "agents")
        agents.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in agents:
            agent.stop()


@pytest.fixture
def enrolled(server: Server, make_agent: Callable[[str], Agent]) -> Callable[..., Agent]:
    """An enrolled agent named ``name`` with ``labels`` (not started).

    Its token is bound to its name, as an operator would make it: a name a
    manifest targets by name takes no other (server/tokens.py).
    """

    def enroll(name: str, **labels: str) -> Agent:
        agent = make_agent(name)
        result = agent.enroll(server, server.token(labels, names=[name]))
        assert result.returncode == 0, result.stderr
        return agent

    return enroll


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
