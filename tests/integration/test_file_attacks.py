"""A real agent (``plumb-agent run --once --root ...``) against a user planting symlinks.

The same attacks as tests/modules/test_file_attacks.py, end to end: the
server pushes file resources under alice's home, ``nobody`` (a real process)
has swapped her directories for symlinks to root's, and the agent must fail
those resources with the message naming the symlink, report them, and leave
the victims alone. Every symlink points inside the test's own sandbox.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import write
from tests.integration.harness import Agent, Server
from tests.modules.attacking import owned_by_nobody, plant, sandbox, swapping
from tests.modules.test_file_attacks import snapshot

WHY = "Plumb never follows a symlink in a parent directory that a non-root user could have planted"

MANIFEST = """\
name: alice
target:
  labels: {role: web}
resources:
  - kind: file
    name: alice-keys
    spec: {path: /home/alice/.ssh/authorized_keys, content: "ssh-ed25519 AAAA alice\\n"}
  - kind: file
    name: alice-config
    spec: {path: /home/alice/.config/app.conf, content: "alice = 1\\n"}
  - kind: file
    name: alice-cache
    spec: {path: /home/alice/.cache/app, state: absent, force: true}
"""


@pytest.fixture
def agent(server: Server) -> Iterator[Agent]:
    """An enrolled agent whose --root nobody can reach (pytest's tmp_path is root-only)."""
    with sandbox() as top:
        agent = Agent("web-1", top / "agents")
        try:
            enrolled = agent.enroll(server, server.token({"role": "web"}))
            assert enrolled.returncode == 0, enrolled.stderr
            root = agent.root
            (root / "root/.ssh").mkdir(parents=True, mode=0o700)
            (root / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA root\n")
            (root / "var/lib/app").mkdir(parents=True)
            (root / "var/lib/app/data").write_text("root's data\n")
            (top / "outside").mkdir()
            (top / "outside/app.conf").write_text("beside the root\n")
            (root / "home").mkdir()
            alice = owned_by_nobody(root / "home/alice")
            owned_by_nobody(alice / ".cache/app")
            owned_by_nobody(alice / ".ssh", 0o700)
            owned_by_nobody(alice / ".config", 0o700)
            yield agent
        finally:
            agent.stop()


def victims(agent: Agent) -> dict[str, Any]:
    top = agent.root.parent.parent.parent
    return {
        "root's .ssh": snapshot(agent.root / "root"),
        "/var/lib": snapshot(agent.root / "var/lib"),
        "beside the root": snapshot(top / "outside"),
    }


def results(server: Server) -> dict[str, tuple[str, str]]:
    report = server.cli_json("report", "web-1")
    return {r["id"]: (r["status"], r["error"] or "") for r in report["results"]}


def test_planted_parent_symlinks_fail_the_resources_and_spare_the_victims(
    server: Server, agent: Agent, tmp_path: Path
) -> None:
    top = agent.root.parent.parent.parent
    alice = agent.root / "home/alice"
    targets = {
        ".ssh": "../../root/.ssh",
        ".config": str(top / "outside"),
        ".cache": "../../var/lib",
    }
    for name, target in targets.items():
        os.rename(alice / name, alice / f"{name}.away")
        plant(alice / name, target)
    before = victims(agent)
    assert server.push(write(tmp_path / "alice.yaml", MANIFEST)).returncode == 0

    run = agent.run_once()
    assert run.returncode == 4, run.stderr  # resources failed

    assert victims(agent) == before
    verbs = {"alice-keys": "read", "alice-config": "read", "alice-cache": "read"}
    paths = {
        "alice-keys": ("/home/alice/.ssh/authorized_keys", ".ssh"),
        "alice-config": ("/home/alice/.config/app.conf", ".config"),
        "alice-cache": ("/home/alice/.cache/app", ".cache"),
    }
    assert results(server) == {
        f"file/{name}": (
            "failed",
            f"cannot {verbs[name]} {path}: parent /home/alice/{directory} is a symlink "
            f"(to {targets[directory]}) owned by nobody (uid 65534); {WHY}",
        )
        for name, (path, directory) in paths.items()
    }


def test_a_racing_user_never_gets_the_agent_to_write_root_s_keys(
    server: Server, agent: Agent, tmp_path: Path
) -> None:
    alice = agent.root / "home/alice"
    before = victims(agent)
    assert server.push(write(tmp_path / "alice.yaml", MANIFEST)).returncode == 0
    message = (
        "parent /home/alice/.ssh is a symlink (to ../../root/.ssh) owned by nobody (uid 65534)"
    )
    with swapping(alice / ".ssh", "../../root/.ssh"):
        for _ in range(6):
            run = agent.run_once()
            assert run.returncode in (0, 4), run.stderr
            assert victims(agent) == before
            status, error = results(server)["file/alice-keys"]
            # Written into her real directory (then in sync), or refused.
            assert status in ("repaired", "in_sync") or (status == "failed" and message in error), (
                error
            )
