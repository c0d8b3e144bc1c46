"""Opening the directory that holds a managed path, without following planted symlinks.

The agent runs as root and works in directories that other users own (a
user's ``~/.ssh``). If it resolved a whole path string, the kernel would
follow any symlink on the way, and a user who swaps ``~/.ssh`` for a symlink
to ``/root/.ssh`` would have root's ``authorized_keys`` written for her. So
kinds never hand a full path to a syscall. :func:`parent_of` walks from the
context root one component at a time, each opened with
``O_PATH|O_DIRECTORY|O_NOFOLLOW`` relative to the one before, and gives back
a descriptor of the directory holding the last component; everything done to
that component then goes through the descriptor (``dir_fd=``), so nothing
swapped in after the walk can redirect it.

The trust rule, in the spirit of systemd-tmpfiles' "unsafe path transition"
and the kernel's ``fs.protected_symlinks``: a symlink among the *parents* is
followed only if

- it is owned by root, and
- the directory holding it is owned by root and writable by neither its
  group nor others (so only root could have put it there or change it).

That keeps a merged ``/usr`` working (``/lib -> usr/lib`` is root's, in
``/``), and refuses every symlink a non-root user could have planted or
redirected. :func:`distrust` is the rule on its own. A trusted symlink's
target is resolved by the same walk: an absolute target from the context
root, never the host's ``/`` (``RESOLVE_IN_ROOT``), and ``..`` stops at the
root instead of climbing above it. At most :data:`MAX_SYMLINKS` symlinks are
followed (as the kernel does), then ELOOP. A component that is neither a
directory nor a symlink is ENOTDIR, a missing one ENOENT.

The context root itself (``--root``) is configuration and is opened as it is.
The last component is never resolved here: it is the caller's to look at
without following (``os.lstat(parent.name, dir_fd=parent.fd)``).

Why a walk rather than ``openat2(2)``: ``RESOLVE_NO_SYMLINKS`` refuses every
symlink, merged ``/usr`` included, and ``RESOLVE_IN_ROOT`` follows every one,
planted or not; neither can express "only root's, in a root-only directory".
The walk is a few syscalls per component and works on every kernel and under
seccomp filters that refuse openat2. Its ``..`` never asks the kernel for a
parent: it goes back to a descriptor it opened on the way down, so a
directory renamed elsewhere meanwhile cannot lead it out of the root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import posixpath
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["MAX_SYMLINKS", "Parent", "UnsafePath", "distrust", "parent_of"]

#: Symlinks followed while resolving one path before giving up with ELOOP (the kernel's limit).
MAX_SYMLINKS = 40
#: Times a component may change between a symlink and a directory under the walk
#: before it is refused as being raced. High: a swapping user loses many races
#: in a row far more often than chance says, and losing is harmless (a retry).
MAX_RACES = 1000

_WHY = "Plumb never follows a symlink in a parent directory that a non-root user could have planted"
_STEP = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A parent of a managed path is a symlink that the trust rule does not allow.

    ``strerror`` is the whole explanation (which component, its target, who
    owns it), for a message ``cannot write <path>: <strerror>``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ELOOP, message)


@dataclasses.dataclass(frozen=True)
class Parent:
    """The directory holding a managed path, opened safely; see :func:`parent_of`.

    ``fd`` is an ``O_PATH`` descriptor, good as ``dir_fd`` for every ``*at``
    call; ``name`` is the path's last component in it; ``where`` is the
    directory as resolved, under the root (``/usr/lib`` for ``/lib``).
    """

    fd: int
    name: str
    where: str


@contextlib.contextmanager
def parent_of(root: Path, path: str) -> Iterator[Parent]:
    """The directory holding ``path`` (absolute, under ``root``), walked safely.

    Raises :class:`UnsafePath` for a symlink the trust rule refuses,
    ``FileNotFoundError`` for a missing component, ``NotADirectoryError`` for
    one that is not a directory, and ``OSError(ELOOP)`` after
    :data:`MAX_SYMLINKS` symlinks. The descriptor is closed on leaving.
    """
    directory, name = posixpath.split(path)
    parts = directory.split("/")
    if not path.startswith("/") or name in ("", ".", "..") or ".." in parts:
        raise ValueError(f"{path!r} is not an absolute path without '..'")
    fd, where = resolve_directory(root, directory)
    try:
        yield Parent(fd, name, where)
    finally:
        os.close(fd)


def resolve_directory(root: Path, directory: str) -> tuple[int, str]:
    """An ``O_PATH`` descriptor of ``directory`` (absolute, under ``root``), and where it is.

    The caller closes the descriptor. Errors as :func:`parent_of` says.
    """
    walk = _Walk(os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    try:
        walk.follow(directory, directory)
        return walk.finish()
    except BaseException:
        walk.close()
        raise


class _Walk:
    """The directories opened so far, from the root down: ``..`` goes back up this stack."""

    def __init__(self, root_fd: int) -> None:
        self._stack: list[tuple[int, str]] = [(root_fd, "/")]
        self._links = 0
        self._races = 0

    def follow(self, text: str, resolving: str) -> None:
        """Walk the components of ``text`` (a spec path or a trusted symlink's target)."""
        if text.startswith("/"):
            self._up_to(1)  # absolute: from the context root, never the host's
        pending = [part for part in reversed(text.split("/")) if part not in ("", ".")]
        while pending:
            part = pending.pop()
            if part == "..":
                self._up_to(max(1, len(self._stack) - 1))  # never above the root
                continue
            target = self._step(part, resolving)
            if target is not None:  # a trusted symlink: walk its target instead
                if target.startswith("/"):
                    self._up_to(1)
                pending.extend(p for p in reversed(target.split("/")) if p not in ("", "."))

    def _step(self, name: str, resolving: str) -> str | None:
        """Descend into ``name``; or, for a trusted symlink, return its target."""
        fd, where = self._stack[-1]
        here = posixpath.join(where, name)
        try:
            self._stack.append((os.open(name, _STEP, dir_fd=fd), here))
            return None
        except NotADirectoryError:
            pass  # a symlink (O_NOFOLLOW) or another non-directory: look closer
        st = os.lstat(name, dir_fd=fd)
        if not stat.S_ISLNK(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(
                errno.ENOTDIR, f"Not a directory: parent {here} is a {_kind(st.st_mode)}"
            )
        if stat.S_ISDIR(st.st_mode):
            # A symlink a moment ago, a directory now: look again (counted, so
            # a racing swapper cannot keep the walk going for ever).
            return self._raced(here, name)
        self._links += 1
        if self._links > MAX_SYMLINKS:
            raise OSError(
                errno.ELOOP,
                f"Too many levels of symbolic links resolving {resolving} "
                f"(more than {MAX_SYMLINKS})",
            )
        reason = distrust(st, os.fstat(fd), where)
        try:
            # In a root-only directory, the very link lstat saw; elsewhere
            # perhaps another one, but then only for the message.
            target = os.readlink(name, dir_fd=fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return self._raced(here, name)  # no longer a symlink: look again, as above
        if reason is not None:
            raise UnsafePath(f"parent {here} is a symlink (to {_shown(target)}) {reason}; {_WHY}")
        return target

    def _raced(self, here: str, name: str) -> str:
        """``name`` changed under the walk: look at it again, unless that keeps happening."""
        self._races += 1
        if self._races > MAX_RACES:
            raise UnsafePath(
                f"parent {here} keeps changing between a symlink and a directory while it is "
                f"resolved (more than {MAX_RACES} times); {_WHY}"
            )
        return name

    def _up_to(self, depth: int) -> None:
        while len(self._stack) > depth:
            os.close(self._stack.pop()[0])

    def finish(self) -> tuple[int, str]:
        """The last directory reached; every other descriptor is closed."""
        last = self._stack.pop()
        self.close()
        return last

    def close(self) -> None:
        self._up_to(0)


def distrust(link: os.stat_result, directory: os.stat_result, where: str) -> str | None:
    """Why the symlink ``link`` in ``directory`` (at ``where``) must not be followed, or None.

    Both are (l)stat results. The reason reads after "is a symlink (to X)".
    Write permission granted by an ACL shows in the group bits (the ACL
    mask), so it is refused too.
    """
    if link.st_uid != 0:
        return f"owned by {_account(link.st_uid)}"
    if directory.st_uid != 0:
        return f"in {where}, a directory owned by {_account(directory.st_uid)}"
    writable = directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable:
        mode = stat.S_IMODE(directory.st_mode)
        return f"in {where}, a directory writable by {_WRITERS[writable]} (mode {mode:04o})"
    return None


_WRITERS = {
    stat.S_IWGRP: "its group",
    stat.S_IWOTH: "others",
    stat.S_IWGRP | stat.S_IWOTH: "its group and others",
}


def _account(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _kind(st_mode: int) -> str:
    if stat.S_ISREG(st_mode):
        return "regular file"
    if stat.S_ISFIFO(st_mode):
        return "FIFO"
    if stat.S_ISSOCK(st_mode):
        return "socket"
    return "device"


def _shown(target: str) -> str:
    """A link target for a message: as it is, or JSON-quoted if it has unprintable characters."""
    return target if target.isprintable() else json.dumps(target)
