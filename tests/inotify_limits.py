"""Real watchers under real inotify limits: a child process in a user namespace of its own.

inotify's limits (``max_inotify_watches``, ``max_inotify_instances``) are
counted per user namespace, and root in a new one (``unshare --user
--map-root-user``) sets its own namespace's in ``/proc/sys/user``, never the
machine's. So a test runs the real watcher in such a child, with a limit as
low as it needs (no watch at all, or one), over files in its own tmp dir:

    with Child("tests.modules.pathwatch_child", [...], watches=0) as child:
        child.wait_for(lambda: child.said("degraded"))

The child speaks one JSON object per line on stdout (:func:`emit`) and takes
commands, one JSON object per line, on stdin (:func:`commands`), where
``{"watches": N}`` or ``{"instances": N}`` changes its limits; end of input
stops it. Its stderr is kept for the failure message.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

_LIMITS = Path("/proc/sys/user")
_emitting = threading.Lock()

# --- the child's side -------------------------------------------------------------


def limit(watches: int | None = None, instances: int | None = None) -> None:
    """Set this user namespace's inotify limits (the child is root in it)."""
    if watches is not None:
        (_LIMITS / "max_inotify_watches").write_text(f"{watches}\n")
    if instances is not None:
        (_LIMITS / "max_inotify_instances").write_text(f"{instances}\n")


def emit(**message: Any) -> None:
    """Tell the test something, as one line (from any thread)."""
    with _emitting:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def commands() -> Iterator[dict[str, Any]]:
    """The test's commands until it closes stdin; limits are set here, the rest yielded."""
    for line in sys.stdin:
        command = json.loads(line)
        if {"watches", "instances"} & command.keys():
            limit(command.get("watches"), command.get("instances"))
            emit(limited=command)
        else:
            yield command


def look(path: Path) -> Any:
    """What is at ``path``, as JSON, not following a link there; a directory with its entries."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return ["link", os.readlink(path)]
    if stat.S_ISDIR(st.st_mode):
        entries = sorted([child.name, look(child)] for child in path.iterdir())
        return ["directory", stat.S_IMODE(st.st_mode), entries]
    return ["file", stat.S_IMODE(st.st_mode), path.read_text(errors="replace")]


# --- the test's side --------------------------------------------------------------


class Child:
    """``python -m module args`` as root of a new user namespace with the given limits."""

    def __init__(
        self, module: str, args: list[str], *, watches: int, instances: int | None = None
    ) -> None:
        limits = f"echo {watches} > {_LIMITS}/max_inotify_watches"
        if instances is not None:
            limits += f" && echo {instances} > {_LIMITS}/max_inotify_instances"
        script = f'{limits} && exec "$0" -m "$@"'
        argv = ["unshare", "--user", "--map-root-user", "sh", "-c", script, sys.executable]
        self.process = subprocess.Popen(
            [*argv, module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        self.messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._cond:
                self.messages.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def said(self, key: str, start: int = 0) -> list[Any]:
        """What the child said under ``key`` so far (from message ``start`` on)."""
        with self._cond:
            return [m[key] for m in self.messages[start:] if key in m]

    def count(self) -> int:
        with self._cond:
            return len(self.messages)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> bool:
        """Whether ``predicate`` (of what the child said) holds within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    return bool(predicate())
                self._cond.wait(left)
            return True

    def stderr(self) -> str:
        return "".join(self._stderr)

    def close(self) -> int:
        """End the child (end of its input) and wait; its exit status."""
        assert self.process.stdin is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            status = self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return status

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        status = self.close()
        sys.stderr.write(self.stderr())  # shown by pytest when the test fails
        if kind is None:
            assert status == 0, f"the child failed ({status}):\n{self.stderr()}"
