"""Real hosts and real package repositories for system tests.

- :mod:`tests.hosts.systemd_host`: a Debian rootfs built once with debootstrap
  and cached under ``/var/cache/plumb-test``, booted as a throwaway systemd
  container (``systemd-nspawn --volatile=overlay``) in a network namespace.
- :mod:`tests.hosts.repos`: small ``.deb``/``.rpm`` packages built in the test,
  flat apt and dnf repositories made from them, and a throwaway dnf installroot.

Errors::

    CommandFailed      a command exited non-zero or timed out (argv, code, output)
    HostError          a container could not be started, reached or stopped
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence


class CommandFailed(RuntimeError):
    """A command failed; the message carries everything needed to see why."""

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str, note: str = ""
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.note = note
        status = note or f"exit code {returncode}"
        super().__init__(
            f"{shlex.join(self.argv)}: {status}\n"
            f"--- stdout ---\n{stdout.rstrip()}\n--- stderr ---\n{stderr.rstrip()}"
        )


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_timeout: Callable[[subprocess.Popen[str]], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` capturing text output; with ``check``, failure raises :class:`CommandFailed`.

    The command runs in a session of its own. At the timeout ``on_timeout``
    (default: SIGKILL the command) must make it exit; whatever it printed
    until then goes into the error.
    """
    # The context manager closes the pipes even when the command is abandoned.
    with subprocess.Popen(
        list(argv),
        # Without input, the child must not inherit pytest's stdin.
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            (on_timeout or subprocess.Popen.kill)(proc)
            stdout, stderr = _drain(proc)
            note = f"timed out after {timeout}s"
            raise CommandFailed(argv, None, stdout, stderr, note) from exc
        except BaseException:  # e.g. Ctrl-C: do not leave the command running
            proc.kill()
            raise
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, stdout, stderr)
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)


def _drain(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The output of a command being stopped; gives up if something else holds its pipes."""
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "", "(output lost: the pipes stayed open after the command was killed)"
