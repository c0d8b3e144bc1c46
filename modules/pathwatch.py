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

The kind only learns *that* something may have changed; the agent debounces,
reads and compares (``agent/watch.py``), so a spurious call costs one check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from modules.base import Context
from modules.errors import Unavailable

__all__ = ["watch_paths"]

# How long the watcher blocks on the inotify descriptor before it looks at
# ``stop`` again: the longest a stop can take. Waking five times a second
# costs nothing measurable and spares a wake-up pipe that ``stop`` knows
# nothing about.
_STOP_POLL_MS = 200


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
    every entry matters (a directory of ``contents_of``).
    """

    directory: Path
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


def _watch_plan(
    paths: Iterable[Path], contents_of: Iterable[Path], root: Path
) -> dict[Path, _Watched]:
    """The directories to watch for ``paths`` and ``contents_of`` (host paths under ``root``).

    A path is watched through its parent directory. When that is missing, the
    nearest existing ancestor is watched for the first missing component
    instead, so creating the directory is noticed (and the plan made again)
    rather than left to the next periodic run. A path with no existing
    ancestor under ``root`` is not watched at all.
    """
    plan: dict[Path, _Watched] = {}
    for path in paths:
        _plan_path(plan, path, root, rearm=False)
    for directory in contents_of:
        # A new directory at this path is a new inode to watch: re-arm.
        _plan_path(plan, directory, root, rearm=True)
        if directory.is_dir():
            plan.setdefault(directory, _Watched(directory)).any_name = True
    return plan


def _plan_path(plan: dict[Path, _Watched], path: Path, root: Path, *, rearm: bool) -> None:
    directory, name = path.parent, path.name
    while not directory.is_dir() and directory != root and directory != directory.parent:
        directory, name, rearm = directory.parent, directory.name, True
    if directory.is_dir():
        plan.setdefault(directory, _Watched(directory)).add(name, rearm)


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
        """Watch what :func:`_watch_plan` says now, instead of what it said before."""
        for wd in self._watches:
            with contextlib.suppress(OSError):  # already gone with its directory
                inotify.rm_watch(wd)
        self._watches = {}
        plan = _watch_plan(self._paths, self._contents_of, self._ctx.root)
        for watched in plan.values():
            try:
                wd = inotify.add_watch(watched.directory, self._mask)
            except OSError as exc:
                # ENOSPC means fs.inotify.max_user_watches is reached. Either
                # way the periodic run still covers this directory.
                self._ctx.log.warning(
                    "cannot watch %s: %s; its paths are checked by periodic runs only",
                    watched.directory,
                    exc.strerror or exc,
                )
                continue
            # Two paths to one directory (a symlink) share one watch.
            self._watches.setdefault(wd, _Watched(watched.directory)).merge(watched)

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
