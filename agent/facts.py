"""Facts the agent reports in its hello: what this host is."""

from __future__ import annotations

import os
import platform
import socket

import psutil


def gather(agent_version: str) -> dict[str, str]:
    release = _os_release()
    return {
        "hostname": socket.gethostname(),
        "os": release.get("ID", platform.system().lower()),
        "os_version": release.get("VERSION_ID", ""),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": str(os.cpu_count() or 0),
        "memory_bytes": str(psutil.virtual_memory().total),
        "python": platform.python_version(),
        "agent_version": agent_version,
    }


def _os_release() -> dict[str, str]:
    try:
        return platform.freedesktop_os_release()
    except OSError:
        return {}
