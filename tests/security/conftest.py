"""Attack tests run against devart's real parts: the control plane behind real HTTP, real agents,
the real broker. The fixtures are the control plane tests' own."""

from tests.control_plane.conftest import admin, agent_credentials, base_url, cp, settings, start_agent

__all__ = ["admin", "agent_credentials", "base_url", "cp", "settings", "start_agent"]
