"""kill -9 of a real `plumb-agent run --once` in the middle of writing a file: what it
leaves is private, and the next run removes it, converges, and touches nothing else."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from inotify_simple import INotify, flags  # type: ignore[import-untyped]

from modules.file import TEMP_PREFIX
from protos import plumb_pb2 as pb
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


def journalled(agent: Agent) -> list[tuple[str, str]]:
    """The intent journal in the agent's spool: (run, resource) of changes not yet reported."""
    uri = f"file:{agent.state_dir / 'spool.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        return [(str(r), str(res)) for r, res in db.execute("SELECT run, resource FROM intents")]


def stored_report(server: Server, report_id: str) -> pb.Report | None:
    uri = f"file:{server.data_dir / 'plumb.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        row = db.execute("SELECT body FROM reports WHERE id = ?", (report_id,)).fetchone()
    return pb.Report.FromString(row[0]) if row else None


def kill_during_second_write(agent: Agent, srv: Path, first: str, deadline: float) -> bool:
    """Run once; SIGKILL it while writing ``srv/second``, once ``srv/first`` is ``first``."""
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
                    if not event.name.startswith(TEMP_PREFIX):
                        continue
                    run.send_signal(signal.SIGSTOP)
                    done = (srv / "first").exists() and (srv / "first").read_text() == first
                    if done and not (srv / "second").exists():
                        run.kill()
                        return True
                    run.send_signal(signal.SIGCONT)
            return False
        finally:
            if run.poll() is None:
                run.kill()
            run.wait(30)


def test_a_run_killed_mid_apply_is_reported_by_the_next_run(
    server: Server, agent: Agent, tmp_path: Path
) -> None:
    srv = agent.root / "srv"
    srv.mkdir(mode=0o755)
    deadline = time.monotonic() + DEADLINE_S
    for attempt in range(ATTEMPTS):
        # Half as big each: two of them must fit in one push (4 MiB).
        half = SIZE // 2
        first, second = f"first {attempt}\n" + "x" * half, f"second {attempt}\n" + "y" * half
        (srv / "second").unlink(missing_ok=True)
        manifest = {
            "name": "two",
            "target": {"all": True},
            "resources": [
                {"kind": "file", "name": "first", "spec": {"path": "/srv/first", "content": first}},
                {
                    "kind": "file",
                    "name": "second",
                    "spec": {"path": "/srv/second", "content": second},
                    "require": ["file/first"],
                },
            ],
        }
        path = tmp_path / "two.yaml"
        path.write_text(yaml.safe_dump(manifest, width=2**30))
        assert server.push(path).returncode == 0
        if kill_during_second_write(agent, srv, first, deadline):
            break
    else:
        pytest.fail(f"no run was caught writing the second file in {ATTEMPTS} attempts")
    # The killed run changed /srv/first and was changing /srv/second: both journalled.
    intents = journalled(agent)
    [killed] = {run for run, _ in intents}
    assert sorted(res for _, res in intents) == ["file/first", "file/second"]

    after = agent.run_once()
    assert after.returncode == 0, after.stderr
    assert "was interrupted: reporting its 2 change(s) for it" in after.stderr
    assert journalled(agent) == []
    report = stored_report(server, killed)
    assert report is not None, "the killed run's report never reached the server"
    assert report.trigger == pb.MANUAL
    by_id = {r.id: r for r in report.results}
    assert by_id["file/first"].status == pb.REPAIRED  # its change went through
    assert by_id["file/second"].status == pb.FAILED  # it did not: the next run made it
    assert by_id["file/second"].error.startswith("interrupted: the agent stopped during this")
    assert (srv / "second").read_text() == second
    newest = server.cli_json("report", "web-1")
    assert newest["id"] != killed
    assert {r["id"]: r["status"] for r in newest["results"]} == {
        "file/first": "in_sync",
        "file/second": "repaired",
    }
