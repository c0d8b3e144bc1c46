"""An unprivileged user racing the agent: a sandbox she can reach, and her swapping loop.

The attacker is a real process running as ``nobody`` (uid and gid 65534, no
supplementary groups): no user is created on this machine. pytest's tmp_path
sits under directories only root may enter, so :func:`sandbox` makes its own
directory with :func:`tempfile.mkdtemp` and opens just that one to others.

Safety: every symlink the attacker plants points inside the sandbox, at
victims the test made there, so code that does follow symlinks (the code
these tests were written against) can only ever damage the sandbox.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.integration.harness import terminate

NOBODY = 65534
# The system's interpreter, not sys.executable: the test's may live where
# nobody cannot enter (a pyenv under /root). The scripts use the stdlib only.
_PYTHON = "/usr/bin/python3"

# Swaps the attacker's directory and a symlink of hers, over and over, with
# renameat2(RENAME_EXCHANGE): the name always exists, a directory one moment
# and a symlink the next. With a refill name, it also keeps an entry of that
# name in the real directory (something for "state: absent" to remove).
_SWAPPER = r"""
import ctypes, os, sys

directory, target, refill = sys.argv[1:4]
swap = directory + ".swap"
libc = ctypes.CDLL(None, use_errno=True)
os.symlink(target, swap)
real = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
print("ready", flush=True)
while True:
    if refill:
        try:
            os.mkdir(refill, dir_fd=real)
            data = os.open(refill + "/data", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=real)
            os.write(data, b"hers\n")
            os.close(data)
        except OSError:
            pass  # already there, or removed again while being filled
    if libc.renameat2(-100, directory.encode(), -100, swap.encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2 " + directory)
"""

# Plants one symlink, for an attack that does not race.
_PLANTER = "import os, sys; os.symlink(sys.argv[2], sys.argv[1])"


@contextmanager
def sandbox() -> Iterator[Path]:
    """A fresh directory that ``nobody`` may traverse (0755), removed with everything in it."""
    top = Path(tempfile.mkdtemp(prefix="plumb-attack-"))
    try:
        top.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top)


def owned_by_nobody(path: Path, mode: int = 0o755) -> Path:
    """Make ``path`` a directory of nobody's (hers to rename, replace, fill)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)
    return path


def as_nobody(script: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``python -I -c script args...`` as uid/gid 65534 with no supplementary groups."""
    return subprocess.Popen(
        [_PYTHON, "-I", "-c", script, *args],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        text=True,
        **popen,
    )


def plant(link: Path, target: str) -> None:
    """nobody makes the symlink ``link`` -> ``target`` (so she owns it)."""
    planter = as_nobody(_PLANTER, str(link), target, stderr=subprocess.PIPE)
    _, errors = planter.communicate(timeout=30)
    assert planter.returncode == 0, errors
    assert link.is_symlink() and os.lstat(link).st_uid == NOBODY


@contextmanager
def swapping(directory: Path, target: str, refill: str = "") -> Iterator[subprocess.Popen[str]]:
    """nobody swaps ``directory`` (hers) with a symlink to ``target`` until the block ends."""
    swapper = as_nobody(
        _SWAPPER, str(directory), target, refill, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert swapper.stdout is not None
        ready = swapper.stdout.readline()
        assert ready == "ready\n", f"the attacker did not start: {ready!r} {swapper.stderr}"
        yield swapper
        assert swapper.poll() is None, f"the attacker stopped: {swapper.communicate()}"
    finally:
        terminate(swapper, 5)
        for stream in (swapper.stdout, swapper.stderr):
            if stream is not None:
                stream.close()


_READER = r"""
import os, sys

for path in sys.argv[1:]:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW))
    except OSError:
        continue
    print(path)
"""


def readable_by_nobody(paths: list[Path]) -> list[str]:
    """Those of ``paths`` that nobody can open for reading."""
    reader = as_nobody(_READER, *map(str, paths), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, errors = reader.communicate(timeout=30)
    assert reader.returncode == 0, errors
    return out.splitlines()
