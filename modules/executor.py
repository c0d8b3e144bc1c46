"""Running commands for kinds: each in its own process group, none past its resource's deadline.

Kinds never call :mod:`subprocess` themselves; they call :meth:`Context.run
<modules.base.Context.run>` (and :meth:`Context.spawn <modules.base.Context.spawn>`
for a long-lived child such as ``nft monitor``), which come here. What that buys,
once for every kind:

- every command runs in a new session (``start_new_session``), so it and
  everything it starts (dpkg under apt-get, a maintainer script under dpkg)
  form one process group that can be killed as a whole;
- a command still running at its resource's deadline is sent SIGTERM as a
  group, SIGKILL after a short grace (:attr:`Executor.grace_s`), and
  :class:`~modules.errors.TimedOut` is raised with what it printed so far;
- output is decoded leniently (a stray byte in a package description must not
  become a ``UnicodeDecodeError`` bug), and stdin is empty unless given.

The engine (``agent/engine.py``) sets the deadline (``Context.deadline``) from
the kind's ``timeout_s`` or the resource's own ``timeout``; a context without
a deadline runs commands without a limit, which is only what a test or a tool
outside the engine asks for.

A kill reaches what stayed in the command's process group. A process that left
it on purpose (``setsid``, a daemon a maintainer script started by hand) is no
longer the command's, and neither is work the command only asked another
process for: ``systemctl start`` killed at its deadline frees the agent, but
the start job it queued stays systemd's (``systemctl list-jobs`` shows it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence

from modules.errors import TimedOut

#: How much of a timed-out command's output goes into its error: the end, where it stopped.
OUTPUT_TAIL_LINES = 20
_SHOWN_COMMAND_CHARS = 120


@dataclasses.dataclass(frozen=True)
class Executor:
    """Runs commands; the real one. ``grace_s``: SIGTERM to SIGKILL for a timed-out group."""

    grace_s: float = 2.0

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None,
        env: Mapping[str, str] | None,
        timeout_s: float | None,
        limit_s: float | None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to its end, or kill its group after ``timeout_s`` (None: no limit).

        ``limit_s`` is the resource's whole timeout, which the message names
        (``timed out after 600 s``): ``timeout_s`` is only what was left of it.
        Raises OSError (FileNotFoundError included) when ``argv`` cannot be
        started, and :class:`TimedOut` at the deadline; the exit status is
        the caller's to judge.
        """
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(input, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stdout, stderr = self._kill(process)
            limit = limit_s if limit_s is not None else timeout_s
            raise TimedOut(
                f"{shown(argv)} timed out after {limit:g} s", _tail(stderr + stdout)
            ) from None
        except BaseException:
            self._kill(process)  # interrupted: leave nothing of it behind
            raise
        return subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)

    def spawn(self, argv: Sequence[str]) -> Child:
        """Start ``argv`` in its own process group, stdout (with stderr) to a pipe."""
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return Child(process, self.grace_s)

    def _kill(self, process: subprocess.Popen[str]) -> tuple[str, str]:
        """SIGTERM the group, SIGKILL it after the grace; everything it printed.

        ``communicate`` keeps what it read before a timeout, so a later call
        returns the whole output, from the start.
        """
        _signal_group(process.pid, signal.SIGTERM)
        try:
            output = process.communicate(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            try:
                output = process.communicate(timeout=self.grace_s)
            except subprocess.TimeoutExpired as exc:
                # Someone who left the group holds our pipes open: stop reading.
                output = (_decoded(exc.output), _decoded(exc.stderr))
                process.kill()
                _close_pipes(process)
                process.wait()
        # Also when the leader is gone: others of its group may have ignored
        # SIGTERM. (Its pid names the group until the last member is gone; only
        # a pid reused within these microseconds could make this hit another.)
        _signal_group(process.pid, signal.SIGKILL)
        return output[0] or "", output[1] or ""


class Child:
    """A long-lived command in its own process group (a watcher's ``nft monitor``).

    ``close`` (or leaving the ``with`` block) ends the whole group: SIGTERM,
    then SIGKILL after the executor's grace.
    """

    def __init__(self, process: subprocess.Popen[bytes], grace_s: float) -> None:
        self._process = process
        self._grace_s = grace_s

    @property
    def stdout_fd(self) -> int:
        assert self._process.stdout is not None
        return self._process.stdout.fileno()

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait(self) -> int:
        return self._process.wait()

    def close(self) -> None:
        _signal_group(self._process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=self._grace_s)
        _signal_group(self._process.pid, signal.SIGKILL)
        self._process.wait()
        _close_pipes(self._process)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def shown(argv: Sequence[str]) -> str:
    """A command as a message shows it: quoted like a shell would, and not too long."""
    text = shlex.join(argv)
    return text if len(text) <= _SHOWN_COMMAND_CHARS else text[: _SHOWN_COMMAND_CHARS - 1] + "…"


def _tail(output: str) -> str:
    return "\n".join(output.strip().splitlines()[-OUTPUT_TAIL_LINES:])


def _decoded(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data or ""


def _signal_group(pgid: int, signum: int) -> None:
    # ESRCH: the whole group is gone already. EPERM: a member changed its
    # credentials (a setuid helper); the rest of the group still got it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _close_pipes(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
