"""A directory on a small tmpfs of its own, to be filled to the last byte: a full disk, for real.

The tmpfs is mounted over a directory the test made (its files copied onto
it first) and unmounted when the test ends, however it ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def on_its_own_tmpfs(directory: Path, size: str = "8m") -> Iterator[Path]:
    """Put ``directory`` (its files kept) on a tmpfs of ``size``; the path of a filler file."""
    saved = directory.with_name(directory.name + ".before-tmpfs")
    shutil.copytree(directory, saved, symlinks=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "plumb-test", str(directory)],
        check=True,
    )
    try:
        shutil.copytree(saved, directory, symlinks=True, dirs_exist_ok=True)
        yield directory / "filler"
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=False)


def fill(filler: Path) -> None:
    """Write ``filler`` until the file system holding it has not one byte left."""
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # Big chunks, then single bytes: a remainder smaller than a page would let SQLite in.
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
        try:
            os.write(descriptor, b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        else:
            raise AssertionError(f"{filler}: still room after filling")
    finally:
        os.close(descriptor)
