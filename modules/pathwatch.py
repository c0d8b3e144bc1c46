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

What inotify will not watch is polled instead, never left unwatched. When
inotify cannot be started (``fs.inotify.max_user_instances`` reached) or will
not take a directory's watch (``fs.inotify.max_user_watches`` reached, no
memory), every path that directory serves is looked at every
:data:`POLL_S` seconds: its ``lstat`` (inode, device, mode, owners, size,
times) and, for ``contents_of``, every entry's, through the same safe walk,
so polling follows no more symlinks than watching does. At each poll
inotify is tried again for them (a limit raised, watches freed elsewhere),
and a path it takes is watched again. Polling is never silent: it is said,
naming the paths and why, through :attr:`Context.watch_degraded
<modules.base.Context.watch_degraded>`, and None is said once everything is
watched through inotify again.

The kind only learns *that* something may have changed; the agent debounces,
reads and compares (``agent/watch.py``), so a spurious call costs one check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import posixpath
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from modules.base import Context
from modules.safepath import parent_of, resolve_directory

__all__ = ["POLL_S", "watch_paths"]

#: Seconds between two looks at a path that inotify would not watch (and two
#: attempts to watch it through inotify again). A drift there is noticed this
#: much later than a watched one; each look is an ``lstat`` per path.
POLL_S = 2.0

# How long the watcher blocks on the inotify descriptor before it looks at
# ``stop`` again: the longest a stop can take. Waking five times a second
# costs nothing measurable and spares a wake-up pipe that ``stop`` knows
# nothing about.
_STOP_POLL_MS = 200
# Plans armed in a row while directories on the way keep changing, before the
# watcher makes do with the last one (someone renaming them as fast as it arms).
_ARM_ATTEMPTS = 8
# Polled paths a sentence names before it counts the rest.
_NAMED = 5
# What an inotify error most likely means, for the operator who has to fix it.
_INIT_HINTS = {errno.EMFILE: "fs.inotify.max_user_instances or the open-file limit reached"}
_WATCH_HINTS = {errno.ENOSPC: "fs.inotify.max_user_watches reached"}


def watch_paths(
    ctx: Context,
    paths: Iterable[Path],
    on_change: Callable[[], None],
    stop: threading.Event,
    *,
    contents_of: Iterable[Path] = (),
    poll_s: float = POLL_S,
) -> None:
    """Call ``on_change`` whenever one of ``paths`` may have changed, until ``stop`` is set.

    ``paths`` and ``contents_of`` are host paths under ``ctx.root`` (from
    :meth:`Context.host_path`); ``contents_of`` are directories whose entries
    matter too. What inotify will not watch is polled every ``poll_s``
    seconds, and said through ``ctx.watch_degraded``.
    """
    targets = [_Target(path, _under(path, ctx.root)) for path in paths]
    targets += [_Target(path, _under(path, ctx.root), contents=True) for path in contents_of]
    _Watcher(ctx, targets, on_change, poll_s).serve(stop)


@dataclasses.dataclass(frozen=True)
class _Target:
    """A path to watch: ``host`` as given, ``inside`` as under the root; with
    ``contents``, a directory whose entries matter too."""

    host: Path
    inside: str
    contents: bool = False


@dataclasses.dataclass
class _Watched:
    """One watched directory: the names in it that matter.

    Each name maps to whether an event on it changes what must be watched: a
    missing directory on the way to a watched path appeared or went away, or
    a directory whose contents are watched was replaced. With ``any_name``,
    every entry matters (a directory of ``contents_of``). ``directory`` is
    where it is, for messages; ``fd`` is the directory itself, opened by the
    safe walk, until its watch is added. ``serves`` are the targets that are
    not watched unless it is.
    """

    directory: Path
    fd: int = -1
    names: dict[str, bool] = dataclasses.field(default_factory=dict)
    any_name: bool = False
    serves: set[_Target] = dataclasses.field(default_factory=set)

    def add(self, name: str, rearm: bool) -> None:
        self.names[name] = self.names.get(name, False) or rearm

    def merge(self, other: _Watched) -> None:
        for name, rearm in other.names.items():
            self.add(name, rearm)
        self.any_name = self.any_name or other.any_name
        self.serves |= other.serves

    def concerns(self, name: str) -> tuple[bool, bool]:
        """Whether an event on ``name`` is a change, and whether it calls for re-arming."""
        return self.any_name or name in self.names, self.names.get(name, False)


_Plan = dict[tuple[int, int], _Watched]  # by the directory's (st_dev, st_ino)


def _watch_plan(targets: Iterable[_Target], root: Path) -> _Plan:
    """The directories to watch for ``targets`` (host paths under ``root``).

    A path is watched through its parent directory. When that is missing, or
    cannot be reached without following a symlink the trust rule of
    :mod:`modules.safepath` refuses (a user's planted link), the nearest
    ancestor that can is watched for the first component that cannot
    instead, so a change there is noticed (and the plan made again) rather
    than left to the next periodic run. A path with no such ancestor under
    ``root`` is in no directory's ``serves``, so it is polled. The caller
    closes every ``fd``.
    """
    plan: _Plan = {}
    try:
        for target in targets:
            # A new directory at a contents_of path is a new inode to watch: re-arm.
            _plan_path(plan, target, root, rearm=target.contents)
            if target.contents:
                _planned(plan, root, target, target.inside, "", rearm=False, any_name=True)
    except BaseException:
        _close(plan)
        raise
    return plan


def _plan_path(plan: _Plan, target: _Target, root: Path, *, rearm: bool) -> None:
    directory, name = posixpath.split(target.inside)
    while not _planned(plan, root, target, directory, name, rearm=rearm) and directory != "/":
        directory, name = posixpath.split(directory)
        rearm = True


def _planned(
    plan: _Plan,
    root: Path,
    target: _Target,
    directory: str,
    name: str,
    *,
    rearm: bool,
    any_name: bool = False,
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
    watched.serves.add(target)
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


# --- polling what inotify will not watch ------------------------------------------


def _signature(root: Path, target: _Target) -> object:
    """What a poll compares for ``target``: its own lstat, and for contents its entries'."""
    own = _lstat(root, target.inside)
    return (own, _entries(root, target.inside)) if target.contents else own


def _lstat(root: Path, inside: str) -> object:
    try:
        with parent_of(root, inside) as parent:
            return _stat_key(os.lstat(parent.name, dir_fd=parent.fd))
    except OSError as exc:  # missing, or behind a symlink not to follow: compare the error
        return exc.errno


def _entries(root: Path, directory: str) -> object:
    """The lstat of every entry directly in ``directory``, reached by the safe walk."""
    try:
        fd, _ = resolve_directory(root, directory)
        try:
            # O_PATH cannot list: open the very directory the walk reached, for reading.
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.errno
    try:
        return frozenset((name, _entry(listing, name)) for name in os.listdir(listing))
    finally:
        os.close(listing)


def _entry(directory_fd: int, name: str) -> object:
    try:
        return _stat_key(os.lstat(name, dir_fd=directory_fd))
    except OSError as exc:  # removed since the listing: the next poll sees it gone
        return exc.errno


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    # ctime moves with every change of content, mode, owner or link count,
    # even one that puts mtime back; the inode tells of a replace.
    return (
        *(st.st_ino, st.st_dev, st.st_mode, st.st_uid, st.st_gid),
        *(st.st_size, st.st_mtime_ns, st.st_ctime_ns),
    )


def _polling(polled: Mapping[Path, str], poll_s: float) -> str | None:
    """What is polled and why, as one sentence for the operator; None when nothing is."""
    by_reason: dict[str, list[str]] = {}
    for path, why in sorted(polled.items()):
        by_reason.setdefault(why, []).append(str(path))
    said = [
        f"polling {_listed(paths)} every {poll_s:g} s: {why}" for why, paths in by_reason.items()
    ]
    return "; ".join(said) or None


def _listed(paths: list[str]) -> str:
    if len(paths) <= _NAMED:
        return ", ".join(paths)
    return f"{', '.join(paths[:_NAMED])} and {len(paths) - _NAMED} more"


def _because(exc: OSError, hints: Mapping[int, str]) -> str:
    hint = hints.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text}: {hint}" if hint else text


# --- the watcher ----------------------------------------------------------------


class _Watcher:
    """inotify on the directories that :func:`_watch_plan` names, and polling for
    the targets it will not take; see :func:`watch_paths`."""

    def __init__(
        self,
        ctx: Context,
        targets: list[_Target],
        on_change: Callable[[], None],
        poll_s: float,
    ) -> None:
        from inotify_simple import INotify, flags  # type: ignore[import-untyped]

        self._ctx = ctx
        self._targets = targets
        self._on_change = on_change
        self._poll_s = poll_s
        self._new_inotify: Callable[[], Any] = INotify
        self._inotify: Any = None  # None until inotify_init succeeds
        self._watches: dict[int, _Watched] = {}
        # The targets inotify does not cover, each with what it looked like
        # when it was last polled; and when the next poll is due.
        self._polled: dict[_Target, object] = {}
        self._next_poll = 0.0
        self._said: str | None = None  # what watch_degraded was last told
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
        try:
            self._arm()
            while not stop.is_set():
                changed, rearm = self._interpret(self._events(stop))
                if self._polled and self._ctx.clock() >= self._next_poll:
                    # Arming walks to every target: only when it may now do
                    # better, or a polled path changed (its plan may have too).
                    polled_changed = self._look(list(self._polled))
                    changed = changed or polled_changed
                    rearm = rearm or polled_changed or self._takes_more()
                if rearm:
                    changed = self._arm() or changed
                # After re-arming, so a change the new watches missed is still
                # seen by whatever the agent reads in answer to this call.
                if changed:
                    self._on_change()
        finally:
            if self._inotify is not None:
                self._inotify.close()

    def _events(self, stop: threading.Event) -> Iterable[Any]:
        """What inotify says until the next poll is due, or ``stop`` may have been set."""
        wait_ms = math.ceil(max(0.0, self._next_poll - self._ctx.clock()) * 1000)
        if not self._polled:
            wait_ms = _STOP_POLL_MS
        if self._inotify is None:  # everything is polled: nothing to hear but stop
            stop.wait(wait_ms / 1000)
            return ()
        events: Iterable[Any] = self._inotify.read(timeout=min(wait_ms, _STOP_POLL_MS))
        return events

    def _arm(self) -> bool:
        """Watch what the plan says now, poll the rest; whether a polled target changed.

        Targets that were polled are looked at once more after the watches
        are placed, so a change just before inotify took one is not lost
        between the last poll and its watch.
        """
        polled = self._arm_inotify()
        changed = self._look(polled)
        self._say(_polling({target.host: why for target, why in polled.items()}, self._poll_s))
        return changed

    def _look(self, polled: Collection[_Target]) -> bool:
        """Poll ``polled`` from now on; whether a target polled until now changed."""
        root = self._ctx.root
        now = {target: _signature(root, target) for target in {*self._polled, *polled}}
        changed = any(now[target] != seen for target, seen in self._polled.items())
        self._polled = {target: now[target] for target in polled}
        self._next_poll = self._ctx.clock() + self._poll_s
        return changed

    def _takes_more(self) -> bool:
        """Whether inotify would now take a watch it would not take for a polled target
        (a limit raised, watches freed elsewhere): then arming does better."""
        if self._inotify is None:
            with contextlib.suppress(OSError):
                self._inotify = self._new_inotify()
            return self._inotify is not None
        plan = _watch_plan(self._polled, self._ctx.root)
        try:
            return any(self._takes(watched) for watched in plan.values())
        finally:
            _close(plan)

    def _takes(self, watched: _Watched) -> bool:
        try:
            wd = self._inotify.add_watch(f"/proc/self/fd/{watched.fd}", self._mask)
        except OSError:
            return False
        if wd in self._watches:
            return False  # watched already, for another target
        self._inotify.rm_watch(wd)  # only a probe: the arm that follows places it for good
        return True

    def _say(self, sentence: str | None) -> None:
        if sentence != self._said:
            self._said = sentence
            self._ctx.watch_degraded(sentence)

    def _arm_inotify(self) -> dict[_Target, str]:
        """Place the watches (starting inotify if need be); the targets left out, with why."""
        if self._inotify is None:
            try:
                self._inotify = self._new_inotify()
            except OSError as exc:
                why = f"inotify could not be started ({_because(exc, _INIT_HINTS)})"
                return dict.fromkeys(self._targets, why)
        failed = self._place(self._inotify)
        covered = set().union(*(watched.serves for watched in self._watches.values()))
        unplanned = "no directory on its way could be opened"
        left = {target: unplanned for target in self._targets if target not in covered}
        return left | failed

    def _place(self, inotify: Any) -> dict[_Target, str]:
        """Watch what :func:`_watch_plan` says now, instead of what it said before;
        the targets of the directories inotify would not take, with why.

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
            failed: dict[_Target, str] = {}
            plan = _watch_plan(self._targets, self._ctx.root)
            try:
                for watched in plan.values():
                    why = self._add_watch(inotify, watched, watches)
                    if why is not None:
                        failed.update(dict.fromkeys(watched.serves, why))
            finally:
                _close(plan)
            added |= watches.keys()
            again = _watch_plan(self._targets, self._ctx.root)
            _close(again)
            if _shape(again) == _shape(plan):
                break
        for wd in (self._watches.keys() | added) - watches.keys():
            with contextlib.suppress(OSError):  # already gone with its directory
                inotify.rm_watch(wd)
        self._watches = watches
        return failed

    def _add_watch(
        self, inotify: Any, watched: _Watched, watches: dict[int, _Watched]
    ) -> str | None:
        """Watch ``watched`` (into ``watches``); None, or why inotify would not take it."""
        # Through the descriptor the safe walk opened, so the watch is on that
        # very directory, whatever is at its path by now.
        try:
            wd = inotify.add_watch(f"/proc/self/fd/{watched.fd}", self._mask)
        except OSError as exc:
            return f"inotify would not take a watch ({_because(exc, _WATCH_HINTS)})"
        # Two paths to one directory (a symlink) share one watch.
        watches.setdefault(wd, _Watched(watched.directory)).merge(watched)
        return None

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
