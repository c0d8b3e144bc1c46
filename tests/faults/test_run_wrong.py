"""The server refuses to be run wrong, and an agent does not hammer or wait on a bad server."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.spool import Spool
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, command, wait_for

MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /etc/motd, content: "hi\\n"}}
"""


def run_server(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("server.main"), "--data-dir", str(data_dir), "run", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_server_on_the_same_data_dir_refuses_to_start(server: Server) -> None:
    second = run_server(
        server.data_dir, "--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0"
    )
    assert second.returncode == 1
    pid = server.process.pid if server.process else None
    assert second.stderr == (
        f"plumb-server: another plumb-server (pid {pid}) is running with {server.data_dir}: "
        "stop it first\n"
    )
    assert "listening" not in second.stdout


def test_a_second_server_on_the_same_ports_refuses_to_start(server: Server, tmp_path: Path) -> None:
    other = Server(tmp_path / "other")  # its own data dir, the first one's ports
    try:
        result = run_server(
            other.data_dir, "--listen", server.agent_address, "--enroll-listen", "127.0.0.1:0"
        )
    finally:
        other.stop()
    assert result.returncode == 1
    assert result.stderr == (
        f"plumb-server: cannot listen on {server.agent_address}: in use by another process "
        "(another plumb-server?)\n"
    )
    assert "listening" not in result.stdout


def test_run_once_against_a_server_that_is_gone_says_why_at_once(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "motd.yaml", MOTD))
    first = agent.run_once()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("manual run of revision 1 (report 1): repaired 1 in ")

    server.stop()  # nothing listens on its port now: refused at once
    agent.path("/etc/motd").write_text("edited\n")
    started = time.monotonic()
    second = agent.run_once(timeout=60)
    waited = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert "no session with server" in second.stderr and "UNAVAILABLE" in second.stderr
    assert second.stdout.startswith("manual run of revision 1 (report 2): repaired 1 in ")
    assert waited < 30, f"waited {waited:.1f}s for a server that refused at once"
    assert agent.path("/etc/motd").read_text() == "hi\n"


@contextlib.contextmanager
def unwritable(*paths: Path) -> Iterator[None]:
    """Make files immutable (chattr +i: even root cannot write them), until the block ends."""
    present = [p for p in paths if p.exists()]
    subprocess.run(["chattr", "+i", *map(str, present)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, present)], check=True)


def test_a_server_that_answers_but_cannot_store_is_not_hammered(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("edge-1")
    (agent.root / "etc").mkdir()
    server.push(write(tmp_path / "motd.yaml", MOTD))
    agent.start()
    wait_for(lambda: server.nodes()["edge-1"]["reported_revision"] == 1, what="the first report")
    db = server.data_dir / "plumb.db"
    log = agent.state_dir.parent / "agent.log"

    def reconnects() -> int:
        return log.read_text().count("reconnecting in")

    # The database and its WAL, not the -shm index: SQLite maps that one, and
    # a mapping that cannot be written kills the process (SIGBUS).
    with unwritable(db, db.with_name("plumb.db-wal")):
        before = reconnects()
        agent.path("/etc/motd").write_text("edited\n")  # a repair, a report the server cannot store
        wait_for(lambda: reconnects() > before, what="the session to end on the failed store")
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started > 10, timeout=15, what="ten seconds")
        during = reconnects() - before
    # Backing off: a few attempts in 10 s, not one every half second.
    # (Without back-off: one every 0.25 s on average, about 36 here.)
    assert during <= 12, f"{during} reconnects in 10 s to a server that cannot store reports"
    wait_for(lambda: Spool(agent.state_dir / "spool.db").count() == 0, timeout=90, what="delivery")


def test_a_failure_nobody_translated_is_internal_with_a_reference_never_its_text(
    server: Server,
) -> None:
    # The database and its WAL, not its -shm: SQLite maps that file, and a
    # mapping it cannot write kills the process with SIGBUS (noted, not handled).
    store = [p for p in sorted(server.data_dir.glob("plumb.db*")) if not p.name.endswith("-shm")]
    with unwritable(*store):
        result = server.cli("token", "create", check=False)
    assert result.returncode == 1
    found = re.search(r"internal error \(reference ([0-9a-f]{8}): the server's log", result.stderr)
    assert found, result.stderr
    assert "(INTERNAL)" in result.stderr
    for leak in ("sqlite", "sqlalchemy", "readonly", "INSERT", "Unexpected"):
        assert leak.lower() not in result.stderr.lower(), result.stderr
    # The operator finds the details under that reference in the server's log.
    log = server.logs()
    assert f"internal error {found[1]} in /plumb.v1.Admin/CreateToken" in log, log
    assert "sqlite3.OperationalError" in log
