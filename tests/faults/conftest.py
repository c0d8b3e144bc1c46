"""Fault tests run real Plumb processes, as the integration tests do: the same fixtures."""

from tests.integration.conftest import enrolled, make_agent, server

__all__ = ["enrolled", "make_agent", "server"]
