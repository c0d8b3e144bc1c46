"""Context.run and Context.spawn: real commands, real process groups, real kills.

Every command here is a real ``sh``/``sleep`` on the test machine, touching
nothing but itself. A command that hangs prints the pids of what it started,
so the test can check that the whole process group is gone afterwards, not
only the command itself.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.base import Context
from modules.errors import ApplyError, ReadError, TimedOut, Unavailable
from modules.executor import Executor
from tests.integration.harness import wait_for

GRACE_S = 0.3
# A command that starts a sleep in its group, says so, and waits for it.
HANGS = 'sleep 30 & echo "started $!"; wait'
# The same, ignoring SIGTERM (an ignored signal stays ignored in the children).
SHRUGS_OFF_SIGTERM = 'trap "" TERM; sleep 30 & echo "started $!"; wait'


def ctx(limit_s: float | None = None) -> Context:
    base = Context(executor=Executor(grace_s=GRACE_S))
    return base if limit_s is None else base.with_timeout(limit_s)


def alive(pid: int) -> bool:
    """Whether ``pid`` is still a running (not zombie) sleep."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and cmdline.startswith(b"sleep")


def started_pid(output: str) -> int:
    return int(output.split("started ", 1)[1].split()[0])


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids a test saw started; killed at the end whatever happened (never left running)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_command_runs_to_its_end_and_its_status_is_the_callers() -> None:
    result = ctx(5).run(["sh", "-c", "cat; echo err >&2; exit 3"], failure=ReadError, input="in\n")
    assert (result.returncode, result.stdout, result.stderr) == (3, "in\n", "err\n")


def test_env_adds_to_the_agents_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUMB_TEST_INHERITED", "yes")
    script = 'echo "$PLUMB_TEST_INHERITED $PLUMB_TEST_ADDED"'
    result = ctx().run(["sh", "-c", script], failure=ReadError, env={"PLUMB_TEST_ADDED": "too"})
    assert result.stdout == "yes too\n"


def test_stdin_is_empty_unless_given() -> None:
    assert ctx(5).run(["cat"], failure=ReadError).stdout == ""


def test_output_that_is_not_utf8_is_decoded_not_a_bug() -> None:
    result = ctx(5).run(["printf", "caf\\351\\n"], failure=ReadError)
    assert result.stdout == "caf\N{REPLACEMENT CHARACTER}\n"


def test_a_missing_program_is_unavailable_and_one_that_cannot_run_is_the_kinds_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(Unavailable, match="no-such-program-here not found"):
        ctx(5).run(["no-such-program-here"], failure=ReadError)
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ApplyError, match=r"cannot run .*not-executable: Permission denied"):
        ctx(5).run([str(script)], failure=ApplyError)


def test_a_command_past_its_deadline_is_killed_with_its_whole_group(leftovers: list[int]) -> None:
    began = time.monotonic()
    with pytest.raises(TimedOut) as caught:
        ctx(0.5).run(["sh", "-c", HANGS], failure=ApplyError)
    took = time.monotonic() - began
    leftovers.append(started_pid(caught.value.output))
    assert str(caught.value).startswith("sh -c ")
    assert "timed out after 0.5 s: started " in str(caught.value)
    assert 0.5 <= took < 0.5 + GRACE_S + 1.0
    # The sleep it started went with it: SIGTERM reached the whole group.
    wait_for(lambda: not alive(leftovers[0]), timeout=2, what="the group's sleep to be gone")


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(leftovers: list[int]) -> None:
    began = time.monotonic()
    with pytest.raises(TimedOut) as caught:
        ctx(0.5).run(["sh", "-c", SHRUGS_OFF_SIGTERM], failure=ApplyError)
    took = time.monotonic() - began
    leftovers.append(started_pid(caught.value.output))
    assert 0.5 + GRACE_S <= took < 0.5 + 2 * GRACE_S + 1.0
    wait_for(lambda: not alive(leftovers[0]), timeout=2, what="the group's sleep to be gone")


def test_a_process_that_left_the_group_holding_the_output_does_not_hold_the_run(
    leftovers: list[int],
) -> None:
    """setsid: no longer the command's to kill, and it keeps stdout open; the run
    still ends, with what was printed so far."""
    script = "setsid sh -c 'echo \"started $$\"; exec sleep 30' & sleep 30"
    began = time.monotonic()
    with pytest.raises(TimedOut) as caught:
        ctx(0.5).run(["sh", "-c", script], failure=ApplyError)
    leftovers.append(started_pid(caught.value.output))
    assert time.monotonic() - began < 0.5 + 2 * GRACE_S + 1.0
    assert alive(leftovers[0])  # not ours any more: the fixture ends it


def test_the_timeout_is_what_is_left_of_the_deadline() -> None:
    now = [100.0]
    context = Context(clock=lambda: now[0]).with_timeout(10)
    now[0] += 9.7  # most of it spent elsewhere (the resource's read, say)
    began = time.monotonic()
    with pytest.raises(TimedOut, match=r"sleep 5 timed out after 10 s$"):
        context.run(["sleep", "5"], failure=ApplyError)
    assert time.monotonic() - began < 2.0
    now[0] += 1
    with pytest.raises(TimedOut, match=r"^sleep 0 not started: timed out after 10 s$"):
        context.run(["sleep", "0"], failure=ApplyError)


def test_without_a_deadline_there_is_no_limit() -> None:
    assert Context().remaining_s() is None
    assert ctx().run(["sh", "-c", "sleep 0.2; echo done"], failure=ReadError).stdout == "done\n"


def test_a_long_command_is_shortened_in_the_message() -> None:
    with pytest.raises(TimedOut) as caught:
        ctx(0.2).run(["sh", "-c", "sleep 5", *["x" * 40] * 5], failure=ReadError)
    assert str(caught.value).split(" timed out")[0].endswith("…")


def test_a_spawned_child_is_ended_with_its_group(leftovers: list[int]) -> None:
    with ctx().spawn(["sh", "-c", SHRUGS_OFF_SIGTERM], failure=ReadError) as child:
        line = b""
        while not line.endswith(b"\n"):
            line += os.read(child.stdout_fd, 100)
        leftovers.append(started_pid(line.decode()))
        wait_for(lambda: alive(leftovers[0]), timeout=2, what="the spawned sleep to start")
    wait_for(lambda: not alive(leftovers[0]), timeout=2, what="the spawned group to be gone")


def test_spawning_a_missing_program_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="no-such-program-here not found"):
        ctx().spawn(["no-such-program-here"], failure=ReadError)
