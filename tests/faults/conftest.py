"""The integration fixtures (a real server, enrolled agents) for the fault tests too."""

from tests.integration.conftest import enrolled, make_agent, server

__all__ = ["enrolled", "make_agent", "server"]
