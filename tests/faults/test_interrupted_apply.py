"""kill -9 of a real `plumb-agent run --once` in the middle of writing a file: what it
leaves is private, and the next run removes it, converges, and touches nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from inotify_simple import INotify, flags  # type: ignore[import-untyped]

from modules.file import TEMP_PREFIX
from tests.integration.harness import Agent, Server
from tests.modules.attacking import NOBODY, owned_by_nobody, readable_by_nobody, sandbox

#: Big enough that writing and fsyncing it takes a while: the kill lands in the middle.
SIZE = 2 * 2**20
ATTEMPTS = 8
DEADLINE_S = 120.0


@pytest.fixture
def agent(server: Server) -> Iterator[Agent]:
    """An enrolled agent whose root others may traverse (so the test can try, as nobody)."""
    with sandbox() as base:
        agent = Agent("web-1", base)
        agent.root.chmod(0o755)
        try:
            enrolled = agent.enroll(server, server.token())
            assert enrolled.returncode == 0, enrolled.stderr
            yield agent
        finally:
            agent.stop()


def push(server: Server, tmp_path: Path, content: str) -> None:
    manifest = {
        "name": "big",
        "target": {"all": True},
        "resources": [
            {"kind": "file", "name": "big", "spec": {"path": "/srv/big", "content": content}}
        ],
    }
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(manifest, width=2**30))
    pushed = server.push(path)
    assert pushed.returncode == 0, pushed.stderr


def entries(directory: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Each entry: inode, mode, owner, content (or link target; nothing for a directory)."""
    found = {}
    for name in sorted(os.listdir(directory)):
        path = directory / name
        st = path.lstat()
        if path.is_symlink():
            body = os.readlink(path).encode()
        elif path.is_file():
            body = path.read_bytes()
        else:
            body = b"".join(n.encode() for n in sorted(os.listdir(path)))
        found[name] = (st.st_ino, st.st_mode, st.st_uid, body)
    return found


def kill_while_writing(agent: Agent, srv: Path, marker: str, deadline: float) -> str | None:
    """Run once; SIGKILL it while a temporary of the new content is in ``srv``; its name.

    SIGSTOP first, so whether the rename has happened yet is known before the
    kill, not guessed: None if this run got past it (then it ran to its end).
    """
    before = set(os.listdir(srv))
    with INotify() as inotify:
        inotify.add_watch(srv, flags.CREATE)
        run = subprocess.Popen(
            agent._cmd("run", "--once", "--root", str(agent.root), "--timeout", "10"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while run.poll() is None:
                assert time.monotonic() < deadline, "run --once neither finished nor wrote"
                for event in inotify.read(timeout=100):
                    if not event.name.startswith(TEMP_PREFIX) or event.name in before:
                        continue
                    run.send_signal(signal.SIGSTOP)
                    if os.path.lexists(srv / event.name) and not renamed(srv, marker):
                        run.kill()
                        return event.name
                    run.send_signal(signal.SIGCONT)
            return None
        finally:
            if run.poll() is None:
                run.kill()
            run.wait(30)


def renamed(srv: Path, marker: str) -> bool:
    big = srv / "big"
    with open(big, "rb") if big.exists() else open(os.devnull, "rb") as stream:
        return stream.read(len(marker)) == marker.encode()


def test_kill_9_mid_write_then_the_next_run_cleans_up_and_converges(
    server: Server, agent: Agent, tmp_path: Path
) -> None:
    srv = agent.root / "srv"
    srv.mkdir(mode=0o755)
    # Neighbours the cleanup must never touch: a file of root's, hers of the
    # agent's temporary name, and a name merely starting like the agent's.
    (srv / "other.conf").write_text("keep me\n")
    owned_by_nobody(srv / ".plumb-tmp-0123456789abcdef", 0o700)
    (srv / ".plumb-old-notes").write_text("not a temporary\n")
    neighbours = entries(srv)

    deadline = time.monotonic() + DEADLINE_S
    for attempt in range(ATTEMPTS):
        marker = f"attempt {attempt}\n"
        content = marker + "x" * SIZE
        push(server, tmp_path, content)
        leftover = kill_while_writing(agent, srv, marker, deadline)
        if leftover is not None:
            break
    else:
        pytest.fail(f"no run was caught mid-write in {ATTEMPTS} attempts")
    left = srv / leftover
    assert os.path.lexists(left)
    # Nobody else can read any of what the killed run left, complete or not.
    under = [left, *(left / n for n in os.listdir(left))] if left.is_dir() else [left]
    assert readable_by_nobody(under) == []

    second = agent.run_once()
    assert second.returncode == 0, second.stderr
    assert (srv / "big").read_text() == content
    after = entries(srv)
    assert after.pop("big")[2] == 0
    assert after == neighbours  # the leftover is gone; nothing else was touched
    assert os.lstat(srv / ".plumb-tmp-0123456789abcdef").st_uid == NOBODY
