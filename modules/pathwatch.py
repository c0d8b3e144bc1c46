"""Learning through inotify that paths may have changed, for any kind that manages paths.

One public function, :func:`watch_paths`, shaped like :meth:`Kind.watch
<modules.base.Kind.watch>`: it blocks until ``stop`` is set and calls
``on_change`` whenever one of the given paths may have changed. For
example::

    # the file kind: each managed path, whatever is there (file, directory, symlink)
    watch_paths(ctx, [ctx.host_path(spec.path) for spec in specs], on_change, stop)

    # a package kind: dpkg's status file (dpkg writes status-new and renames it
    # over status), and every entry of rpm's database directory
    watch_paths(
        ctx, [ctx.host_path("/var/lib/dpkg/status")], on_change, stop,
        contents_of=[ctx.host_path("/var/lib/rpm")],
    )

A path changes when something is created at it, removed, renamed away or
renamed over it (an atomic replace, Plumb's own included), when a file there
is closed after writing, or when its attributes change (mode, owner, times,
link count). A symlink at a path is not followed: a new link there (a new
target) is a change, a write to the file it points to is not. A directory in
``contents_of`` also changes when any entry directly inside it does (one
level, not the whole tree).

Directories are watched, not the paths themselves: an atomic replace puts a
new inode at the path, and a watch on the old inode would never hear of the
next change. A missing directory is watched for through its nearest existing
ancestor, so creating it is noticed and the watches are placed again.

Directories are found the way the file kind finds them (:mod:`modules.safepath`):
walked from the root without following a symlink a non-root user could have
planted, and watched through the descriptor that walk opened. A parent that
is such a symlink is treated like a missing directory: its own directory is
watched for it, so a user who swaps ``~/.ssh`` for a link to ``/root/.ssh``
never gets root's directory watched, and her real one is watched again once
it is back.

The kind only learns *that* something may have changed; the agent debounces,
reads and compares (``agent/watch.py``), so a spurious call costs one check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from modules.base import Context
from modules.errors import Unavailable
from modules.safepath import resolve_directory

__all__ = ["watch_paths"]

# How long the watcher blocks on the inotify descriptor before it looks at
# ``stop`` again: the longest a stop can take. Waking five times a second
# costs nothing measurable and spares a wake-up pipe that ``stop`` knows
# nothing about.
_STOP_POLL_MS = 200
# Plans armed in a row while directories on the way keep changing, before the
# watcher makes do with the last one (someone renaming them as fast as it arms).
_ARM_ATTEMPTS = 8


def watch_paths(
    ctx: Context,
    paths: Iterable[Path],
    on_change: Callable[[], None],
    stop: threading.Event,
    *,
    contents_of: Iterable[Path] = (),
) -> None:
    """Call ``on_change`` whenever one of ``paths`` may have changed, until ``stop`` is set.

    ``paths`` and ``contents_of`` are host paths under ``ctx.root`` (from
    :meth:`Context.host_path`); ``contents_of`` are directories whose entries
    matter too. A directory that cannot be watched (``fs.inotify.max_user_watches``
    reached) is logged on ``ctx.log`` and left to the periodic run. Raises
    :class:`~modules.errors.Unavailable` when inotify itself cannot be used.
    """
    _Watcher(ctx, list(paths), list(contents_of), on_change).serve(stop)


@dataclasses.dataclass
class _Watched:
    """One watched directory: the names in it that matter.

    Each name maps to whether an event on it changes what must be watched: a
    missing directory on the way to a watched path appeared or went away, or
    a directory whose contents are watched was replaced. With ``any_name``,
    every entry matters (a directory of ``contents_of``). ``directory`` is
    where it is, for messages; ``fd`` is the directory itself, opened by the
    safe walk, until its watch is added.
    """

    directory: Path
    fd: int = -1
    names: dict[str, bool] = dataclasses.field(default_factory=dict)
    any_name: bool = False

    def add(self, name: str, rearm: bool) -> None:
        self.names[name] = self.names.get(name, False) or rearm

    def merge(self, other: _Watched) -> None:
        for name, rearm in other.names.items():
            self.add(name, rearm)
        self.any_name = self.any_name or other.any_name

    def concerns(self, name: str) -> tuple[bool, bool]:
        """Whether an event on ``name`` is a change, and whether it calls for re-arming."""
        return self.any_name or name in self.names, self.names.get(name, False)


_Plan = dict[tuple[int, int], _Watched]  # by the directory's (st_dev, st_ino)


def _watch_plan(paths: Iterable[Path], contents_of: Iterable[Path], root: Path) -> _Plan:
    """The directories to watch for ``paths`` and ``contents_of`` (host paths under ``root``).

    A path is watched through its parent directory. When that is missing, or
    cannot be reached without following a symlink the trust rule of
    :mod:`modules.safepath` refuses (a user's planted link), the nearest
    ancestor that can is watched for the first component that cannot
    instead, so a change there is noticed (and the plan made again) rather
    than left to the next periodic run. A path with no such ancestor under
    ``root`` is not watched at all. The caller closes every ``fd``.
    """
    plan: _Plan = {}
    try:
        for path in paths:
            _plan_path(plan, _under(path, root), root, rearm=False)
        for directory in contents_of:
            # A new directory at this path is a new inode to watch: re-arm.
            inside = _under(directory, root)
            _plan_path(plan, inside, root, rearm=True)
            _planned(plan, root, inside, "", rearm=False, any_name=True)
    except BaseException:
        _close(plan)
        raise
    return plan


def _plan_path(plan: _Plan, path: str, root: Path, *, rearm: bool) -> None:
    directory, name = posixpath.split(path)
    while not _planned(plan, root, directory, name, rearm=rearm) and directory != "/":
        directory, name = posixpath.split(directory)
        rearm = True


def _planned(
    plan: _Plan, root: Path, directory: str, name: str, *, rearm: bool, any_name: bool = False
) -> bool:
    """Add ``name`` in ``directory`` to the plan; False if the directory cannot be reached."""
    try:
        fd, _ = resolve_directory(root, directory)
    except OSError:  # missing, not a directory, a symlink not to follow: watch further up
        return False
    st = os.fstat(fd)
    watched = plan.get((st.st_dev, st.st_ino))
    if watched is None:
        watched = plan[st.st_dev, st.st_ino] = _Watched(root / directory.lstrip("/"), fd)
    else:
        os.close(fd)  # already planned, through another path (a trusted symlink)
    if name:
        watched.add(name, rearm)
    watched.any_name = watched.any_name or any_name
    return True


def _shape(plan: _Plan) -> dict[tuple[int, int], tuple[frozenset[tuple[str, bool]], bool]]:
    """What a plan watches, to tell whether two plans are the same."""
    return {key: (frozenset(w.names.items()), w.any_name) for key, w in plan.items()}


def _under(path: Path, root: Path) -> str:
    """The absolute path under ``root`` of the host path ``path``."""
    inside = str(path.relative_to(root))
    return "/" if inside == "." else "/" + inside


def _close(plan: _Plan) -> None:
    for watched in plan.values():
        if watched.fd >= 0:
            os.close(watched.fd)
            watched.fd = -1


class _Watcher:
    """inotify on the directories that :func:`_watch_plan` names; see :func:`watch_paths`."""

    def __init__(
        self,
        ctx: Context,
        paths: list[Path],
        contents_of: list[Path],
        on_change: Callable[[], None],
    ) -> None:
        from inotify_simple import flags  # type: ignore[import-untyped]

        self._ctx = ctx
        self._paths = paths
        self._contents_of = contents_of
        self._on_change = on_change
        self._watches: dict[int, _Watched] = {}
        # What can change a path's presence, content, mode or owners, as seen
        # from its directory. MODIFY is left out: CLOSE_WRITE tells of a
        # finished write once, instead of once per write(2).
        children = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
        self._mask = int(children | flags.CLOSE_WRITE | flags.ATTRIB | flags.ONLYDIR)
        self._mask |= int(flags.DELETE_SELF | flags.MOVE_SELF)
        # The watched directory itself went away (IGNORED follows the removal
        # of its watch): everything in it is gone, and the plan must change.
        self._gone = int(flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED)
        self._overflow = int(flags.Q_OVERFLOW)

    def serve(self, stop: threading.Event) -> None:
        from inotify_simple import INotify

        try:
            inotify = INotify()
        except OSError as exc:
            raise Unavailable(f"inotify: {exc.strerror or exc}") from exc
        with inotify:
            self._arm(inotify)
            while not stop.is_set():
                changed, rearm = self._interpret(inotify.read(timeout=_STOP_POLL_MS))
                if rearm:
                    self._arm(inotify)
                # After re-arming, so a change the new watches missed is still
                # seen by whatever the agent reads in answer to this call.
                if changed:
                    self._on_change()

    def _arm(self, inotify: Any) -> None:
        """Watch what :func:`_watch_plan` says now, instead of what it said before.

        New watches are added before the old ones go (a directory in both
        keeps its watch, and no event on it is lost), and once they are in
        place the plan is made again: if a directory on the way appeared or
        went meanwhile, its event may have come before its watch, so the
        plan is armed again. A plan that holds with its watches in place
        hears of every later change.
        """
        added: set[int] = set()
        for _ in range(_ARM_ATTEMPTS):
            watches: dict[int, _Watched] = {}
            plan = _watch_plan(self._paths, self._contents_of, self._ctx.root)
            try:
                for watched in plan.values():
                    self._add_watch(inotify, watched, watches)
            finally:
                _close(plan)
            added |= watches.keys()
            again = _watch_plan(self._paths, self._contents_of, self._ctx.root)
            _close(again)
            if _shape(again) == _shape(plan):
                break
        for wd in (self._watches.keys() | added) - watches.keys():
            with contextlib.suppress(OSError):  # already gone with its directory
                inotify.rm_watch(wd)
        self._watches = watches

    def _add_watch(self, inotify: Any, watched: _Watched, watches: dict[int, _Watched]) -> None:
        # Through the descriptor the safe walk opened, so the watch is on that
        # very directory, whatever is at its path by now.
        try:
            wd = inotify.add_watch(f"/proc/self/fd/{watched.fd}", self._mask)
        except OSError as exc:
            # ENOSPC means fs.inotify.max_user_watches is reached. Either
            # way the periodic run still covers this directory.
            self._ctx.log.warning(
                "cannot watch %s: %s; its paths are checked by periodic runs only",
                watched.directory,
                exc.strerror or exc,
            )
            return
        # Two paths to one directory (a symlink) share one watch.
        watches.setdefault(wd, _Watched(watched.directory)).merge(watched)

    def _interpret(self, events: Iterable[Any]) -> tuple[bool, bool]:
        """Whether ``events`` concern a watched path, and whether to re-arm."""
        changed = rearm = False
        for event in events:
            if event.mask & self._overflow:  # events were lost: anything may have changed
                changed = True
                continue
            watched = self._watches.get(event.wd)
            if watched is None:  # a watch removed by _arm
                continue
            if event.mask & self._gone:
                changed = rearm = True
                continue
            concerned, rearms = watched.concerns(event.name)
            changed = changed or concerned
            rearm = rearm or rearms
        return changed, rearm
