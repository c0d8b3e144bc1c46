"""The ``file`` kind: one regular file's presence, content, mode and ownership.

Example manifest::

    - kind: file
      name: motd
      spec: {path: /etc/motd, content: "hello\\n", mode: "0644", owner: root, group: root}

Spec fields:

``path``
    Required. Absolute, normalised; ``..`` is refused.
``state``
    ``present`` (default) or ``absent``. With ``absent`` only ``path`` may be given.
``content``
    The whole text of the file, written as UTF-8. Not given: content is not managed.
``mode``
    A quoted octal string, ``"0644"``. Not given: kept (a new file gets ``0644``).
``owner``, ``group``
    A name or a numeric id as a string (``"0"``). Not given: kept. Names are
    resolved on the host at read time, so a dry run already reports an
    unknown user.

Behaviour worth knowing: content is replaced atomically (temporary
``.plumb-*`` file in the same directory, then rename), so readers see the old
or the new file, never half of one. A symlink at ``path`` is replaced by a
file, never written through. A directory (or device, FIFO, socket) at
``path`` is never replaced or removed: that is refused. Missing parent
directories are not created; that is the job of a directory resource.

Watching: the agent learns of out-of-band changes through inotify on the
parent directories of the managed paths (see :meth:`FileKind.watch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import grp
import hashlib
import json
import os
import posixpath
import pwd
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from modules.base import Change, Context, Kind
from modules.errors import ApplyError, OperationError, ReadError, SpecError, Unavailable
from modules.registry import register
from modules.spec import Presence, SpecReader

# Content up to this size is kept in the state so a diff can show it; larger
# files are known by hash and size only.
CONTENT_KEPT_LIMIT = 64 * 1024
# Content is shown quoted in a change only when both sides are this short.
_INLINE_LIMIT = 60
_NEW_FILE_MODE = 0o644
TEMP_PREFIX = ".plumb-"
_NUMERIC_ID = re.compile(r"[0-9]+")
# Names may not contain whitespace or ':' (the passwd separator) or start
# with '-' (it would read as an option to every tool the operator uses).
_ACCOUNT = re.compile(r"[^\s:-][^\s:]*")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown(2)


class FileType(enum.StrEnum):
    """What is at a path. Only FILE is managed; the rest is reported or refused."""

    ABSENT = "absent"
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    SPECIAL = "special file"  # FIFO, socket or device


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """A parsed ``file`` spec. None means "not managed"."""

    path: str
    state: Presence = Presence.PRESENT
    content: str | None = None
    mode: int | None = None
    owner: str | None = None
    group: str | None = None


@dataclasses.dataclass(frozen=True)
class Account:
    """A user or group: its id and, when the host knows one, its name."""

    id: int
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.name}({self.id})" if self.name is not None else str(self.id)


@dataclasses.dataclass(frozen=True)
class FileState:
    """What :meth:`FileKind.read` saw. Fields past ``type`` are set only for a FILE."""

    type: FileType
    size: int = 0
    sha256: str | None = None  # hex; None when content is not managed
    content: bytes | None = None  # the bytes, when managed and <= CONTENT_KEPT_LIMIT
    mode: int | None = None  # permission bits (stat.S_IMODE)
    owner: Account | None = None
    group: Account | None = None
    # The spec's owner and group as this host resolves them. They live in the
    # state because resolving needs the host's user database, and diff is pure.
    wanted_owner: Account | None = None
    wanted_group: Account | None = None


class FileKind(Kind[FileSpec, FileState]):
    """Manages one regular file."""

    name = "file"
    watchable = True

    def parse(self, raw: Mapping[str, Any]) -> FileSpec:
        reader = SpecReader(raw)
        spec = FileSpec(
            path=reader.absolute_path("path"),
            state=reader.choice("state", Presence, default=Presence.PRESENT),
            content=reader.string("content"),
            mode=reader.octal_mode("mode"),
            owner=_account_field(reader, "owner"),
            group=_account_field(reader, "group"),
        )
        reader.finish()
        if spec.state is Presence.ABSENT:
            _refuse_attributes_of_absent(spec)
        return spec

    def read(self, ctx: Context, spec: FileSpec) -> FileState:
        with _translated(ReadError, f"read {spec.path}"):
            state = observe(ctx.host_path(spec.path), with_content=spec.content is not None)
        return dataclasses.replace(
            state,
            wanted_owner=_USERS.resolve(spec.owner, spec.path) if spec.owner is not None else None,
            wanted_group=_GROUPS.resolve(spec.group, spec.path) if spec.group is not None else None,
        )

    def diff(self, spec: FileSpec, state: FileState) -> list[Change]:
        if spec.state is Presence.ABSENT:
            absent = state.type is FileType.ABSENT
            return [] if absent else [Change("state", _presence(state), "absent")]
        facets = (
            _presence_change(state),
            _content_change(spec, state),
            _mode_change(spec, state),
            _account_change("owner", _wanted(spec.owner, state.wanted_owner), state.owner, state),
            _account_change("group", _wanted(spec.group, state.wanted_group), state.group, state),
        )
        return [change for change in facets if change is not None]

    def apply(self, ctx: Context, spec: FileSpec, state: FileState, changes: list[Change]) -> None:
        target = ctx.host_path(spec.path)
        if spec.state is Presence.ABSENT:
            _remove(target, spec.path, state)
        elif state.type is FileType.FILE and not _rewrites(changes):
            _update_in_place(target, spec.path, _attributes(spec, state))
        else:
            _refuse_to_clobber(spec.path, state)
            # Unmanaged content only gets here for a new file: it starts empty.
            content = (spec.content or "").encode()
            _write_atomically(target, spec.path, content, _attributes(spec, state))

    def watch(
        self,
        ctx: Context,
        specs: Sequence[FileSpec],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Call ``on_change`` when a managed path may have changed, until ``stop`` is set.

        Directories are watched, not files: an atomic replace (ours or an
        editor's) puts a new inode at the path, and a watch on the old inode
        would never hear of the next change.
        """
        _Watcher(ctx, [ctx.host_path(spec.path) for spec in specs], on_change).serve(stop)


# --- parse -------------------------------------------------------------------


def _account_field(reader: SpecReader, name: str) -> str | None:
    """A user or group name, or a numeric id; resolved later, on the host."""
    text = reader.string(name, hint=f'quote numeric ids, e.g. {name}: "0"')
    if text is None:
        return None
    if not _ACCOUNT.fullmatch(text):
        raise reader.error(name, f"expected a {_NOUNS[name]} name or numeric id, got {text!r}")
    if _NUMERIC_ID.fullmatch(text) and int(text) > _MAX_ID:
        raise reader.error(name, f"numeric id {text} is out of range (max {_MAX_ID})")
    return text


def _refuse_attributes_of_absent(spec: FileSpec) -> None:
    given = {"content": spec.content, "mode": spec.mode, "owner": spec.owner, "group": spec.group}
    for name, value in given.items():
        if value is not None:
            raise SpecError(name, "not allowed with state: absent (an absent file has none)")


# --- read --------------------------------------------------------------------


def observe(host_path: Path, *, with_content: bool) -> FileState:
    """Look at ``host_path`` without following a symlink there.

    The content is read (and hashed) only when it is managed: a file managed
    for its mode alone may be a multi-gigabyte log.
    """
    try:
        st = os.lstat(host_path)
    except FileNotFoundError:
        return FileState(FileType.ABSENT)
    if not with_content or not stat.S_ISREG(st.st_mode):
        return state_from_stat(st)
    # O_NOFOLLOW and fstat guard against the path changing after lstat;
    # O_NONBLOCK keeps a FIFO swapped in meanwhile from blocking the read.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with open(os.open(host_path, flags), "rb") as stream:
        st = os.fstat(stream.fileno())
        if not stat.S_ISREG(st.st_mode):
            return state_from_stat(st)
        sha256, content = _digest(stream)
    return dataclasses.replace(state_from_stat(st), sha256=sha256, content=content)


def state_from_stat(st: os.stat_result) -> FileState:
    """Interpret an (l)stat result: type, and for a regular file size, mode and owners."""
    file_type = type_of(st.st_mode)
    if file_type is not FileType.FILE:
        return FileState(file_type)
    return FileState(
        FileType.FILE,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        owner=_USERS.by_id(st.st_uid),
        group=_GROUPS.by_id(st.st_gid),
    )


def type_of(st_mode: int) -> FileType:
    """The FileType of an lstat ``st_mode``."""
    if stat.S_ISREG(st_mode):
        return FileType.FILE
    if stat.S_ISDIR(st_mode):
        return FileType.DIRECTORY
    if stat.S_ISLNK(st_mode):
        return FileType.SYMLINK
    return FileType.SPECIAL


def _digest(stream: BinaryIO) -> tuple[str, bytes | None]:
    """The sha256 of the whole stream, and its bytes if they are few enough to keep."""
    head = stream.read(CONTENT_KEPT_LIMIT + 1)
    digest = hashlib.sha256(head)
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest(), head if len(head) <= CONTENT_KEPT_LIMIT else None


@dataclasses.dataclass(frozen=True)
class _AccountDatabase:
    """Users or groups of this host. Lookups raise KeyError, as pwd and grp do."""

    noun: str
    id_of: Callable[[str], int]
    name_of: Callable[[int], str]

    def by_id(self, account_id: int) -> Account:
        # An id without a name is still a valid owner (files from a tarball).
        try:
            return Account(account_id, self.name_of(account_id))
        except KeyError:
            return Account(account_id)

    def resolve(self, text: str, path: str) -> Account:
        """The account a spec names, by name or numeric id; ReadError if unknown."""
        if _NUMERIC_ID.fullmatch(text):
            return self.by_id(int(text))
        try:
            return Account(self.id_of(text), text)
        except KeyError:
            raise ReadError(f"no such {self.noun} {text!r} (wanted for {path})") from None


_USERS = _AccountDatabase(
    "user", lambda n: pwd.getpwnam(n).pw_uid, lambda i: pwd.getpwuid(i).pw_name
)
_GROUPS = _AccountDatabase(
    "group", lambda n: grp.getgrnam(n).gr_gid, lambda i: grp.getgrgid(i).gr_name
)
_NOUNS = {"owner": "user", "group": "group"}


# --- diff (pure) ---------------------------------------------------------------


def _presence(state: FileState) -> str:
    return "present" if state.type is FileType.FILE else str(state.type)


def _presence_change(state: FileState) -> Change | None:
    if state.type is FileType.FILE:
        return None
    return Change("state", _presence(state), "present")


def _content_change(spec: FileSpec, state: FileState) -> Change | None:
    if spec.content is None:
        return None
    wanted = spec.content.encode()
    wanted_sha256 = hashlib.sha256(wanted).hexdigest()
    if state.type is FileType.FILE and state.sha256 == wanted_sha256:
        return None
    desired_inline = _inline(wanted)
    if state.type is not FileType.FILE:
        return Change("content", str(state.type), desired_inline or _fingerprint(wanted))
    observed_inline = _inline(state.content) if state.content is not None else None
    if observed_inline and desired_inline:
        return Change("content", observed_inline, desired_inline)
    observed = f"sha256:{(state.sha256 or '?')[:12]} ({state.size} bytes)"
    return Change("content", observed, _fingerprint(wanted))


def _inline(data: bytes) -> str | None:
    """``data`` as quoted text if it is short, UTF-8 and at most one line; else None."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    if len(text) > _INLINE_LIMIT or "\n" in text.removesuffix("\n"):
        return None
    return json.dumps(text, ensure_ascii=False)


def _fingerprint(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()[:12]} ({len(data)} bytes)"


def _mode_change(spec: FileSpec, state: FileState) -> Change | None:
    if spec.mode is None or (state.type is FileType.FILE and state.mode == spec.mode):
        return None
    observed = _octal(state.mode) if state.type is FileType.FILE else str(state.type)
    return Change("mode", observed, _octal(spec.mode))


def _octal(mode: int | None) -> str:
    return "?" if mode is None else f"{mode:04o}"


def _account_change(
    field: str, wanted: Account | None, observed: Account | None, state: FileState
) -> Change | None:
    if wanted is None:
        return None
    if state.type is not FileType.FILE:
        return Change(field, str(state.type), str(wanted))
    if observed is not None and observed.id == wanted.id:
        return None
    return Change(field, str(observed), str(wanted))


def _wanted(spec_value: str | None, resolved: Account | None) -> Account | None:
    """The resolved account for a spec's owner or group; states must come from read()."""
    if spec_value is not None and resolved is None:
        raise ValueError(f"state has no resolved account for {spec_value!r}; use FileKind.read")
    return resolved


# --- apply -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Attributes:
    """What to set on the file; -1 leaves an id as it is (chown(2) semantics)."""

    mode: int
    uid: int
    gid: int


def _attributes(spec: FileSpec, state: FileState) -> _Attributes:
    """Managed values from the spec; unmanaged ones as :func:`_kept` says."""
    kept = _kept(state)
    owner = _wanted(spec.owner, state.wanted_owner)
    group = _wanted(spec.group, state.wanted_group)
    return _Attributes(
        mode=kept.mode if spec.mode is None else spec.mode,
        uid=kept.uid if owner is None else owner.id,
        gid=kept.gid if group is None else group.id,
    )


def _kept(state: FileState) -> _Attributes:
    """What a rewrite keeps of the file it replaces; a new file gets 0644 and our ids."""
    if state.type is FileType.FILE and state.mode is not None and state.owner and state.group:
        return _Attributes(state.mode, state.owner.id, state.group.id)
    return _Attributes(_NEW_FILE_MODE, -1, -1)


def _rewrites(changes: list[Change]) -> bool:
    """Whether the content must be written; otherwise attributes change in place."""
    return any(change.field in ("state", "content") for change in changes)


def _refuse_to_clobber(path: str, state: FileState) -> None:
    if state.type in (FileType.DIRECTORY, FileType.SPECIAL):
        raise ApplyError(f"refusing to replace {path}: it is a {state.type}, not a regular file")


def _update_in_place(target: Path, path: str, attributes: _Attributes) -> None:
    # Through a descriptor opened with O_NOFOLLOW, so a symlink swapped in
    # since read() makes this fail instead of changing the link's target.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with _translated(ApplyError, f"change {path}"):
        descriptor = os.open(target, flags)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ApplyError(f"refusing to change {path}: no longer a regular file")
            _set_attributes(descriptor, attributes)
        finally:
            os.close(descriptor)


def _set_attributes(descriptor: int, attributes: _Attributes) -> None:
    # chown first: it clears setuid/setgid bits that the chmod must then set.
    os.fchown(descriptor, attributes.uid, attributes.gid)
    os.fchmod(descriptor, attributes.mode)


def _write_atomically(target: Path, path: str, content: bytes, attributes: _Attributes) -> None:
    """Write a complete temporary file beside ``target`` and rename it over ``target``.

    Mode and owner are set before the rename so the file never appears with
    the wrong ones. rename(2) replaces a symlink itself, never its target.
    """
    descriptor, temporary = _create_temporary(target.parent, path)
    try:
        with _translated(ApplyError, f"write {path}"), open(descriptor, "wb") as stream:
            stream.write(content)
            stream.flush()
            _set_attributes(stream.fileno(), attributes)
            os.fsync(stream.fileno())
        with _translated(ApplyError, f"replace {path}"):
            os.replace(temporary, target)
    except BaseException:
        # The original error matters more than a failure to clean up after it.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_directory(target.parent, path)


def _create_temporary(directory: Path, path: str) -> tuple[int, str]:
    """A new private file in ``directory``; ApplyError naming a missing parent."""
    parent = posixpath.dirname(path)
    try:
        return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    except FileNotFoundError as exc:
        raise ApplyError(f"cannot write {path}: directory {parent} does not exist") from exc
    except NotADirectoryError as exc:
        raise ApplyError(f"cannot write {path}: {parent} is not a directory") from exc
    except OSError as exc:
        raise ApplyError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _sync_directory(directory: Path, path: str) -> None:
    """fsync the directory so the rename or unlink itself survives a crash."""
    with _translated(ApplyError, f"sync the directory of {path}"):
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _remove(target: Path, path: str, state: FileState) -> None:
    """Unlink a file or a symlink (not its target); refuse directories and the like."""
    if state.type is FileType.ABSENT:
        return
    if state.type in (FileType.DIRECTORY, FileType.SPECIAL):
        raise ApplyError(f"refusing to remove {path}: it is a {state.type}, not a regular file")
    with _translated(ApplyError, f"remove {path}"), contextlib.suppress(FileNotFoundError):
        os.unlink(target)  # "already gone" is the goal, not an error
    _sync_directory(target.parent, path)


# --- watch -------------------------------------------------------------------

# How long the watcher blocks on the inotify descriptor before it looks at
# ``stop`` again: the longest a stop can take. Waking five times a second
# costs nothing measurable and spares a wake-up pipe that ``stop`` knows
# nothing about.
_STOP_POLL_MS = 200


@dataclasses.dataclass
class _Watched:
    """One watched directory: the names in it that matter.

    Each name maps to whether an event on it changes what must be watched: a
    missing directory on the way to a managed path appeared or went away.
    """

    directory: Path
    names: dict[str, bool] = dataclasses.field(default_factory=dict)

    def add(self, name: str, rearm: bool) -> None:
        self.names[name] = self.names.get(name, False) or rearm


def _watch_plan(paths: Iterable[Path], root: Path) -> dict[Path, _Watched]:
    """The directories to watch for ``paths`` (host paths under ``root``).

    A managed file is watched through its parent directory. When that is
    missing, the nearest existing ancestor is watched for the first missing
    component instead, so creating the directory is noticed (and the plan made
    again) rather than left to the next periodic run. A path with no existing
    ancestor under ``root`` is not watched at all.
    """
    plan: dict[Path, _Watched] = {}
    for path in paths:
        directory, name, rearm = path.parent, path.name, False
        while not directory.is_dir() and directory != root and directory != directory.parent:
            directory, name, rearm = directory.parent, directory.name, True
        if directory.is_dir():
            plan.setdefault(directory, _Watched(directory)).add(name, rearm)
    return plan


class _Watcher:
    """inotify on the directories of some managed paths; see :meth:`FileKind.watch`."""

    def __init__(self, ctx: Context, paths: list[Path], on_change: Callable[[], None]) -> None:
        from inotify_simple import flags  # type: ignore[import-untyped]

        self._ctx = ctx
        self._paths = paths
        self._on_change = on_change
        self._watches: dict[int, _Watched] = {}
        # What can change a file's presence, content, mode or owners, as seen
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
        for watched in _watch_plan(self._paths, self._ctx.root).values():
            try:
                wd = inotify.add_watch(watched.directory, self._mask)
            except OSError as exc:
                # ENOSPC means fs.inotify.max_user_watches is reached. Either
                # way the periodic run still covers this directory.
                self._ctx.log.warning(
                    "cannot watch %s: %s; its files are checked by periodic runs only",
                    watched.directory,
                    exc.strerror or exc,
                )
                continue
            # Two paths to one directory (a symlink) share one watch.
            known = self._watches.setdefault(wd, _Watched(watched.directory))
            for name, rearm in watched.names.items():
                known.add(name, rearm)

    def _interpret(self, events: Iterable[Any]) -> tuple[bool, bool]:
        """Whether ``events`` concern a managed path, and whether to re-arm."""
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
            elif event.name in watched.names:
                changed = True
                rearm = rearm or watched.names[event.name]
        return changed, rearm


@contextlib.contextmanager
def _translated(error: type[OperationError], action: str) -> Iterator[None]:
    """Turn an OSError into ``error`` naming the action, the path and the OS's reason."""
    try:
        yield
    except OSError as exc:
        raise error(f"cannot {action}: {exc.strerror or exc}") from exc


register(FileKind())
