"""The ``file`` kind: what is at one path — a regular file, a directory or a symlink.

Example manifest::

    - kind: file
      name: motd
      spec: {path: /etc/motd, content: "hello\\n", mode: "0644", owner: root, group: root}

    - kind: file
      name: app-home
      spec: {path: /srv/app, type: directory, mode: "0750", owner: root, group: adm}

    - kind: file
      name: app-current
      spec: {path: /srv/app/current, type: link, target: releases/42}

    - kind: file
      name: old-cache
      spec: {path: /var/cache/old-app, state: absent, force: true}

Spec fields:

``path``
    Required. Absolute, normalised; ``..`` is refused.
``state``
    ``present`` (default) or ``absent``. With ``absent`` only ``path`` and
    ``force`` may be given: whatever is at ``path`` is removed (see below).
``type``
    What must be at ``path``: ``file`` (default, a regular file),
    ``directory`` or ``link`` (a symlink).
``content``
    ``type: file`` only. The whole text of the file, written as UTF-8. Not
    given: content is not managed (a new file starts empty).
``target``
    Required with ``type: link``, refused otherwise. What the link points to,
    stored exactly as given (absolute or relative); never resolved, and it
    need not exist.
``mode``
    A quoted octal string, ``"0644"``. Not given: not managed, and never set
    on what is there (a new file gets ``0644``, a new directory ``0755``; see
    "Mode, setuid and setgid" below). Refused for a link: Linux gives every
    symlink ``0777`` and has no way to change it.
``owner``, ``group``
    A name or a numeric id as a string (``"0"``). Not given: kept. Names are
    resolved on the host at read time, so a dry run already reports an
    unknown user. A link's own owner is managed (lchown), never its target's.
``force``
    ``false`` (default) or ``true``: whether a non-empty directory at ``path``
    may be removed with everything in it, to make way for a file or link or
    for ``state: absent``. Refused with ``type: directory``, which never
    removes a directory.

What is replaced or removed, and how. Nothing at ``path`` is ever followed
if it is a symlink, and nothing is written in place: a new file, directory
or link is made complete (content, mode, owners) inside a private staging
directory ``.plumb-tmp-<16 hex digits>`` (0700, the agent's, locked while in
use) in the same directory, then renamed to ``path``, so readers see the old
or the new one, never half of one, and nobody else can read it before.
What a killed run leaves is only such a directory; the next change in that
directory removes it (and Plumb 0.1.0's ``.plumb-<16 hex digits>``
temporaries of the agent's), never anything else. Mode and owners of
something of the right type are changed in place; a link is always renamed
anew. What is in the way, of another type, is treated by what it risks:

- A regular file or a symlink is just a name: a new file or link is renamed
  over it (atomically); for a new directory it is unlinked first, as
  rename(2) cannot put a directory over a non-directory. ``state: absent``
  unlinks it; a symlink's target is never touched.
- An empty directory is removed with rmdir(2), which the kernel refuses if
  an entry appeared since it was read.
- A non-empty directory is an ApplyError unless ``force: true``; even then
  it is refused if a filesystem is mounted at or inside it.
- A device, FIFO or socket is never replaced or removed.

Missing parent directories are not created, for any type; each is a
``type: directory`` resource of its own, ordered with ``require``.

Parent directories and symlinks. The agent is root and works in
directories other users own (``~/.ssh``), so a path is never resolved as a
string: the directory holding it is walked from the root (``/``, or
``--root``) one component at a time without following symlinks
(:mod:`modules.safepath`), and everything is done through that directory's
descriptor. A symlink among the parents is followed only if it is owned by
root *and* sits in a root-owned directory that its group and others cannot
write (merged ``/usr``: ``/lib -> usr/lib``); its target is resolved the same
way, from the root, never above it. Any other symlink there fails the
resource (in a dry run as well), naming it::

    cannot write /home/alice/.ssh/authorized_keys: parent /home/alice/.ssh is a
    symlink (to /root/.ssh) owned by alice (uid 1000); Plumb never follows a
    symlink in a parent directory that a non-root user could have planted

To manage such a path, manage it at the symlink's target instead, or make
the link root's, in a directory only root can write. A parent that is
neither a directory nor such a symlink fails the resource too (``Not a
directory``).

Mode, setuid and setgid. A mode is only ever set when the spec manages it.
Without ``mode``, an entry changed in place (owner, group) is never chmod-ed;
as with chown(1), the kernel clears a file's setuid and setgid bits when its
owner or group changes, and they stay cleared: ``owner: root`` on a user's
setuid file does not make a setuid-root program. A file replaced (new
content) keeps the permission bits of the one it replaces, but never its
setuid, setgid or sticky bit. To keep or grant those, manage ``mode``
(``"4755"``); it is set after the owner.

Watching: the agent learns of out-of-band changes through inotify on the
directories holding the managed paths (:func:`modules.pathwatch.watch_paths`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import errno
import fcntl
import grp
import hashlib
import json
import logging
import os
import posixpath
import pwd
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, TypeVar

from modules.base import Change, Context, Identity, Kind, Removable, Watchable
from modules.errors import ApplyError, OperationError, ReadError, SpecError
from modules.pathwatch import watch_paths
from modules.registry import register
from modules.safepath import Parent, parent_of
from modules.spec import Field, Presence, SpecReader

_T = TypeVar("_T")

# Content up to this size is kept in the state so a diff can show it; larger
# files are known by hash and size only.
CONTENT_KEPT_LIMIT = 64 * 1024
# Content is shown quoted in a change only when both sides are this short.
_INLINE_LIMIT = 60
#: What every temporary name of the file kind starts with (see "temporaries" below).
TEMP_PREFIX = ".plumb-"
#: A staging directory: ``.plumb-tmp-<16 hex digits>``.
STAGING_PREFIX = f"{TEMP_PREFIX}tmp-"
_STAGING_NAME = re.compile(r"\.plumb-tmp-([0-9a-f]{16})")
_LEGACY_NAME = re.compile(r"\.plumb-[0-9a-f]{16}")  # Plumb 0.1.0's temporaries
# When this process started, near enough: a 0.1.0 temporary changed since is no leftover.
_STARTED = time.time()
_NUMERIC_ID = re.compile(r"[0-9]+")
# Names may not contain whitespace or ':' (the passwd separator) or start
# with '-' (it would read as an option to every tool the operator uses).
_ACCOUNT = re.compile(r"[^\s:-][^\s:]*")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown(2)
# PATH_MAX counts the terminating NUL: a link target holds at most 4095 bytes.
_MAX_TARGET_BYTES = 4095
_MOUNTINFO = "/proc/self/mountinfo"


class EntryType(enum.StrEnum):
    """What a spec wants at its path (``type:``)."""

    FILE = "file"
    DIRECTORY = "directory"
    LINK = "link"


class FileType(enum.StrEnum):
    """What is at a path. The values of :class:`EntryType` are managed; the rest is not."""

    ABSENT = "absent"
    FILE = "file"
    DIRECTORY = "directory"
    LINK = "link"
    SPECIAL = "special file"  # FIFO, socket or device


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """A parsed ``file`` spec. None means "not managed"."""

    path: str
    state: Presence = Presence.PRESENT
    type: EntryType = EntryType.FILE
    content: str | None = None
    target: str | None = None
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    force: bool = False

    @property
    def wanted_type(self) -> FileType:
        """``type`` in the vocabulary of what read() observes."""
        return FileType(self.type.value)


@dataclasses.dataclass(frozen=True)
class Account:
    """A user or group: its id and, when the host knows one, its name."""

    id: int
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.name}({self.id})" if self.name is not None else str(self.id)


@dataclasses.dataclass(frozen=True)
class FileState:
    """What :meth:`FileKind.read` saw.

    ``owner`` and ``group`` are set for a file, a directory and a link,
    ``mode`` for a file and a directory, ``target`` for a link, and the
    content fields for a file whose content is managed.
    """

    type: FileType
    size: int = 0
    sha256: str | None = None  # hex; None when content is not managed
    content: bytes | None = None  # the bytes, when managed and <= CONTENT_KEPT_LIMIT
    mode: int | None = None  # permission bits (stat.S_IMODE)
    owner: Account | None = None
    group: Account | None = None
    target: str | None = None  # what a link points to (readlink)
    # The spec's owner and group as this host resolves them. They live in the
    # state because resolving needs the host's user database, and diff is pure.
    wanted_owner: Account | None = None
    wanted_group: Account | None = None
    #: The directory that would hold it does not exist (the file kind makes
    #: none): said in the change, so a dry run shows why the apply will fail.
    missing_directory: str | None = None


class FileKind(Kind[FileSpec, FileState], Watchable[FileSpec], Removable[FileSpec]):
    """Manages what is at one path: a regular file, a directory or a symlink."""

    name = "file"
    fields = (
        Field("path", "absolute path; '..' is refused", required=True),
        Field("state", "present (default) or absent"),
        Field("type", "file (default), directory or link"),
        Field("content", "the whole text of a file (UTF-8); not given: not managed"),
        Field("target", "what a link points to (type: link only)"),
        Field("mode", 'quoted octal, e.g. "0644"; not given: kept'),
        Field("owner", "user name or numeric id as a string; not given: kept"),
        Field("group", "group name or numeric id as a string; not given: kept"),
        Field("force", "true: a non-empty directory in the way may be removed"),
    )

    def parse(self, raw: Mapping[str, Any]) -> FileSpec:
        reader = SpecReader(raw, self.fields)
        spec = FileSpec(
            path=reader.absolute_path("path"),
            state=reader.choice("state", Presence, default=Presence.PRESENT),
            type=reader.choice("type", EntryType, default=EntryType.FILE),
            content=reader.string("content"),
            target=_link_target(reader),
            mode=reader.octal_mode("mode"),
            owner=_account_field(reader, "owner"),
            group=_account_field(reader, "group"),
            force=reader.boolean("force"),
        )
        reader.finish()
        if spec.state is Presence.ABSENT:
            _refuse_attributes_of_absent(spec, type_given="type" in raw)
        else:
            _check_fields_of_type(spec)
        return spec

    def identities(self, spec: FileSpec) -> tuple[Identity, ...]:
        return (Identity("path", spec.path),)

    def removal(self, spec: FileSpec) -> dict[str, Any]:
        # Never force: a directory that still holds anything is left, and fails.
        return {"path": spec.path, "state": "absent"}

    def read(self, ctx: Context, spec: FileSpec) -> FileState:
        with _translated(ReadError, f"read {spec.path}"):
            try:
                with parent_of(ctx.root, spec.path) as parent:
                    state = observe(parent, with_content=spec.content is not None)
            except FileNotFoundError:  # a parent directory is missing
                state = FileState(FileType.ABSENT, missing_directory=posixpath.dirname(spec.path))
        return dataclasses.replace(
            state,
            wanted_owner=_USERS.resolve(spec.owner, spec.path) if spec.owner is not None else None,
            wanted_group=_GROUPS.resolve(spec.group, spec.path) if spec.group is not None else None,
        )

    def diff(self, spec: FileSpec, state: FileState) -> list[Change]:
        if spec.state is Presence.ABSENT:
            absent = state.type is FileType.ABSENT
            return [] if absent else [Change("state", _presence(state), "absent")]
        wanted = spec.wanted_type
        facets = (
            _type_change(wanted, state),
            _content_change(spec, state),
            _target_change(spec, state),
            _mode_change(spec, state),
            _account_change("owner", _wanted(spec.owner, state.wanted_owner), wanted, state),
            _account_change("group", _wanted(spec.group, state.wanted_group), wanted, state),
        )
        return [change for change in facets if change is not None]

    def apply(self, ctx: Context, spec: FileSpec, state: FileState, changes: list[Change]) -> None:
        if spec.state is Presence.ABSENT:
            if state.type is FileType.ABSENT:
                return
            if state.type is FileType.SPECIAL:
                raise ApplyError(f"refusing to remove {spec.path}: it is a {state.type}")
        elif state.type is FileType.SPECIAL:
            raise ApplyError(f"refusing to replace {spec.path}: it is a {state.type}")
        with contextlib.ExitStack() as stack:
            parent = _open_parent(stack, ctx, spec, state)
            if parent is None:
                return  # to be removed, and its directory is gone: so is it
            _remove_leftovers(parent, ctx.log)
            if spec.state is Presence.ABSENT:
                _remove(parent, spec, state)
            elif state.type is spec.wanted_type and not _recreates(spec, changes):
                _update_in_place(parent, spec.path, spec.wanted_type, _changed(spec, state))
            else:
                _put(parent, spec, state, _renewed(spec, state))

    def watch(
        self,
        ctx: Context,
        specs: Sequence[FileSpec],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Call ``on_change`` when a managed path may have changed, until ``stop`` is set.

        Everything a spec manages shows in the directory holding its path: a
        file's content and attributes, a directory's own attributes (not its
        entries, which are resources of their own), a link's target and owner.
        """
        watch_paths(ctx, [ctx.host_path(spec.path) for spec in specs], on_change, stop)


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


def _link_target(reader: SpecReader) -> str | None:
    """A symlink's target: any text the kernel can store, taken as it is."""
    text = reader.string("target")
    if text is None:
        return None
    if not text:
        raise reader.error("target", "expected the path the link points to, got ''")
    if "\0" in text:
        raise reader.error("target", "a link target cannot contain a NUL character")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise reader.error("target", "expected valid Unicode text") from None
    if size > _MAX_TARGET_BYTES:
        raise reader.error("target", f"is {size} bytes long (at most {_MAX_TARGET_BYTES})")
    return text


def _refuse_attributes_of_absent(spec: FileSpec, *, type_given: bool) -> None:
    if type_given:
        raise SpecError(
            "type",
            "not allowed with state: absent (whatever is at path is removed; "
            "a non-empty directory only with force: true)",
        )
    given = {
        "content": spec.content,
        "target": spec.target,
        "mode": spec.mode,
        "owner": spec.owner,
        "group": spec.group,
    }
    for name, value in given.items():
        if value is not None:
            raise SpecError(name, "not allowed with state: absent (an absent file has none)")


# Fields that make no sense for a type, and why, in the order they are checked.
_REFUSED_FOR: dict[EntryType, dict[str, str]] = {
    EntryType.FILE: {"target": "only allowed with type: link"},
    EntryType.DIRECTORY: {
        "content": (
            "not allowed with type: directory (a directory has no content; "
            "manage each file in it as a file resource)"
        ),
        "target": "only allowed with type: link",
    },
    EntryType.LINK: {
        "content": "not allowed with type: link (a link has a target, not content)",
        "mode": (
            "not allowed with type: link (Linux gives every symlink mode 0777; "
            "manage the mode of what it points to)"
        ),
    },
}


def _check_fields_of_type(spec: FileSpec) -> None:
    for name, reason in _REFUSED_FOR[spec.type].items():
        if getattr(spec, name) is not None:
            raise SpecError(name, reason)
    if spec.type is EntryType.LINK and spec.target is None:
        raise SpecError("target", "required with type: link (the path the link points to)")
    if spec.type is EntryType.DIRECTORY and spec.force:
        raise SpecError(
            "force",
            "not allowed with type: directory (a directory resource never removes a directory)",
        )


# --- read --------------------------------------------------------------------


def observe(parent: Parent, *, with_content: bool) -> FileState:
    """Look at ``parent.name`` in the directory ``parent`` without following a symlink there.

    The content is read (and hashed) only when it is managed: a file managed
    for its mode alone may be a multi-gigabyte log.
    """
    try:
        st = os.lstat(parent.name, dir_fd=parent.fd)
    except FileNotFoundError:
        return FileState(FileType.ABSENT)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(parent.name, dir_fd=parent.fd)
        return dataclasses.replace(state_from_stat(st), target=target)
    if not with_content or not stat.S_ISREG(st.st_mode):
        return state_from_stat(st)
    # O_NOFOLLOW and fstat guard against the path changing after lstat;
    # O_NONBLOCK keeps a FIFO swapped in meanwhile from blocking the read.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with open(os.open(parent.name, flags, dir_fd=parent.fd), "rb") as stream:
        st = os.fstat(stream.fileno())
        if not stat.S_ISREG(st.st_mode):
            return state_from_stat(st)
        sha256, content = _digest(stream)
    return dataclasses.replace(state_from_stat(st), sha256=sha256, content=content)


def state_from_stat(st: os.stat_result) -> FileState:
    """Interpret an (l)stat result: the type, and what is managed of that type."""
    file_type = type_of(st.st_mode)
    if file_type is FileType.SPECIAL:
        return FileState(file_type)
    return FileState(
        file_type,
        size=st.st_size if file_type is FileType.FILE else 0,
        # A symlink's mode is always 0777 on Linux, and not managed.
        mode=None if file_type is FileType.LINK else stat.S_IMODE(st.st_mode),
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
        return FileType.LINK
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


def _type_change(wanted: FileType, state: FileState) -> Change | None:
    """``state: absent → present`` for nothing there, ``type: a → b`` for another type."""
    if state.type is FileType.ABSENT:
        if state.missing_directory is not None:
            return Change(
                "state", f"absent (directory {state.missing_directory} does not exist)", "present"
            )
        return Change("state", "absent", "present")
    if state.type is wanted:
        return None
    return Change("type", str(state.type), str(wanted))


def _content_change(spec: FileSpec, state: FileState) -> Change | None:
    if spec.content is None:
        return None
    wanted = spec.content.encode()
    wanted_sha256 = hashlib.sha256(wanted).hexdigest()
    if state.type is FileType.FILE and state.sha256 == wanted_sha256:
        return None
    desired_inline = _inline(wanted)
    if state.type is not FileType.FILE:
        logged = f"content: {state.type} → {_fingerprint(wanted)}"
        return Change("content", str(state.type), desired_inline or _fingerprint(wanted), logged)
    observed_inline = _inline(state.content) if state.content is not None else None
    observed = f"sha256:{(state.sha256 or '?')[:12]} ({state.size} bytes)"
    # Content is in a report (short text, quoted) but never in the log: a hash there.
    logged = f"content: {observed} → {_fingerprint(wanted)}"
    if observed_inline and desired_inline:
        return Change("content", observed_inline, desired_inline, logged)
    diff = text_diff(state.content, wanted, spec.path) if state.content is not None else None
    return Change("content", observed, _fingerprint(wanted), logged, diff)


#: Text diffs are made for contents of at most this many lines on either side.
MAX_DIFF_LINES = 500


def text_diff(observed: bytes, desired: bytes, path: str) -> str | None:
    """``diff -u`` of two small texts (UTF-8, no NUL, at most MAX_DIFF_LINES); None otherwise.

    ``observed`` is only ever what :func:`observe` kept (at most
    CONTENT_KEPT_LIMIT bytes): a larger file has no diff, only its hash.
    """
    if b"\0" in observed or b"\0" in desired:
        return None
    try:
        before = observed.decode().splitlines(keepends=True)
        after = desired.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return None
    if max(len(before), len(after)) > MAX_DIFF_LINES:
        return None
    lines = difflib.unified_diff(before, after, f"{path} (now)", f"{path} (desired)")
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


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


def _target_change(spec: FileSpec, state: FileState) -> Change | None:
    if spec.target is None or (state.type is FileType.LINK and state.target == spec.target):
        return None
    observed = _shown(state.target) if state.type is FileType.LINK else str(state.type)
    return Change("target", observed, _shown(spec.target))


def _shown(target: str | None) -> str:
    """A link target for a report: as it is, or JSON-quoted if it has unprintable characters.

    readlink gives undecodable bytes as lone surrogates, which a report (UTF-8
    on the wire) cannot carry; JSON escapes them.
    """
    if target is None:
        return "?"
    return target if target.isprintable() else json.dumps(target)


def _mode_change(spec: FileSpec, state: FileState) -> Change | None:
    same_type = state.type is spec.wanted_type
    if spec.mode is None or (same_type and state.mode == spec.mode):
        return None
    observed = _octal(state.mode) if same_type else str(state.type)
    return Change("mode", observed, _octal(spec.mode))


def _octal(mode: int | None) -> str:
    return "?" if mode is None else f"{mode:04o}"


def _account_change(
    field: str, wanted: Account | None, wanted_type: FileType, state: FileState
) -> Change | None:
    if wanted is None:
        return None
    if state.type is not wanted_type:
        return Change(field, str(state.type), str(wanted))
    observed = state.owner if field == "owner" else state.group
    if observed is not None and observed.id == wanted.id:
        return None
    return Change(field, str(observed), str(wanted))


def _wanted(spec_value: str | None, resolved: Account | None) -> Account | None:
    """The resolved account for a spec's owner or group; states must come from read()."""
    if spec_value is not None and resolved is None:
        raise ValueError(f"state has no resolved account for {spec_value!r}; use FileKind.read")
    return resolved


# --- apply -------------------------------------------------------------------

# What a new file, directory or link gets when its mode is not managed. A
# link's mode is never set: Linux ignores it.
_NEW_MODE = {FileType.FILE: 0o644, FileType.DIRECTORY: 0o755, FileType.LINK: 0o777}
# Never carried over to a replacement unless the spec's mode has them: a new
# content under an old setuid bit is a privilege nobody granted.
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
# Names tried for a temporary before giving up (each 64 random bits).
_TEMP_ATTEMPTS = 16


@dataclasses.dataclass(frozen=True)
class _Attributes:
    """What to set on a new or changed entry.

    -1 leaves an id as it is (chown(2) semantics); a mode of None is not
    set at all (only for a change in place: a new entry always gets one).
    """

    mode: int | None
    uid: int
    gid: int


def _open_parent(
    stack: contextlib.ExitStack, ctx: Context, spec: FileSpec, state: FileState
) -> Parent | None:
    """The directory holding ``spec.path``, walked safely; None if it is gone and
    ``spec`` wants the path absent. Closed with ``stack``."""
    verb = _verb(spec, state)
    try:
        return stack.enter_context(parent_of(ctx.root, spec.path))
    except FileNotFoundError as exc:
        if spec.state is Presence.ABSENT:
            return None
        directory = posixpath.dirname(spec.path)
        raise ApplyError(
            f"cannot {verb} {spec.path}: directory {directory} does not exist"
        ) from exc
    except OSError as exc:
        raise ApplyError(f"cannot {verb} {spec.path}: {exc.strerror or exc}") from exc


def _verb(spec: FileSpec, state: FileState) -> str:
    """What apply is about to do to ``spec.path``, for a message."""
    if spec.state is Presence.ABSENT:
        return "remove"
    if state.type is FileType.ABSENT:
        return "create"
    return "write" if spec.type is EntryType.FILE else "change"


def _changed(spec: FileSpec, state: FileState) -> _Attributes:
    """What a change in place sets: exactly what the spec manages, nothing else.

    An unmanaged mode is never set, so a chown (which clears setuid and
    setgid, as chown(1) does) is never followed by a chmod putting them back.
    """
    owner = _wanted(spec.owner, state.wanted_owner)
    group = _wanted(spec.group, state.wanted_group)
    return _Attributes(
        mode=spec.mode,
        uid=-1 if owner is None else owner.id,
        gid=-1 if group is None else group.id,
    )


def _renewed(spec: FileSpec, state: FileState) -> _Attributes:
    """What a new entry gets: managed values from the spec, the rest as :func:`_kept` says."""
    kept = _kept(state, spec.wanted_type)
    owner = _wanted(spec.owner, state.wanted_owner)
    group = _wanted(spec.group, state.wanted_group)
    return _Attributes(
        mode=kept.mode if spec.mode is None else spec.mode,
        uid=kept.uid if owner is None else owner.id,
        gid=kept.gid if group is None else group.id,
    )


def _kept(state: FileState, wanted: FileType) -> _Attributes:
    """What replacing an entry of the wanted type keeps of it; a new one gets our ids.

    The permission bits are kept, never setuid, setgid or sticky.
    """
    new_mode = _NEW_MODE[wanted]
    if state.type is wanted and state.owner and state.group:
        mode = new_mode if state.mode is None else state.mode & ~_SPECIAL_BITS
        return _Attributes(mode, state.owner.id, state.group.id)
    return _Attributes(new_mode, -1, -1)


def _recreates(spec: FileSpec, changes: list[Change]) -> bool:
    """Whether a new entry must be renamed into place; otherwise attributes change in place.

    A link is always made anew: a symlink cannot be opened to change it
    through a descriptor, and a rename is atomic where an lchown by name
    could meet something else swapped in since read().
    """
    renewed = ("state", "type", "content", "target")
    return spec.type is EntryType.LINK or any(change.field in renewed for change in changes)


def _update_in_place(parent: Parent, path: str, wanted: FileType, attributes: _Attributes) -> None:
    # Through a descriptor opened with O_NOFOLLOW, so a symlink swapped in
    # since read() makes this fail instead of changing the link's target.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with _translated(ApplyError, f"change {path}"):
        descriptor = os.open(parent.name, flags, dir_fd=parent.fd)
        try:
            if type_of(os.fstat(descriptor).st_mode) is not wanted:
                raise ApplyError(f"refusing to change {path}: no longer a {wanted}")
            _set_attributes(descriptor, attributes)
        finally:
            os.close(descriptor)


def _set_attributes(descriptor: int, attributes: _Attributes) -> None:
    # chown first: it clears setuid/setgid bits, which only a managed mode
    # (set after it) may put back.
    if (attributes.uid, attributes.gid) != (-1, -1):
        os.fchown(descriptor, attributes.uid, attributes.gid)
    if attributes.mode is not None:
        os.fchmod(descriptor, attributes.mode)


def _put(parent: Parent, spec: FileSpec, state: FileState, attributes: _Attributes) -> None:
    """Make the new entry complete beside ``parent.name``, clear the way, and rename it over."""
    with _staging(parent, spec.path) as staging:
        _PREPARE[spec.type](staging, spec, attributes)
        try:
            _clear_the_way(parent, spec, state)
            with _translated(ApplyError, f"replace {spec.path}"):
                os.replace(staging.name, parent.name, src_dir_fd=staging.fd, dst_dir_fd=parent.fd)
        except BaseException:
            # The original error matters more than a failure to clean up after it.
            with contextlib.suppress(OSError):
                _discard(staging, spec.type)
            raise
    _sync_directory(parent, spec.path)


def _clear_the_way(parent: Parent, spec: FileSpec, state: FileState) -> None:
    """Remove what rename(2) cannot replace: a directory, or a non-directory for a directory.

    Decided on what read() saw; if something else is there by now, the
    syscalls fail (rmdir on a file, unlink on a directory, rename onto a
    non-empty directory) rather than destroy what nobody looked at.
    """
    if state.type is FileType.DIRECTORY:  # only when a file or link is wanted
        _remove_directory(parent, spec, "replace")
    elif state.type is not FileType.ABSENT and spec.type is EntryType.DIRECTORY:
        _unlink(parent, spec.path, "replace")


# --- temporaries -------------------------------------------------------------
#
# A new entry is made in a staging directory of its own, ``.plumb-tmp-<token>``
# (16 hex digits), beside the path: made 0700 by the agent and flock-ed for as
# long as it exists. The entry is made in it under the name ``<token>``, with
# its final mode and owners (others cannot reach it through the 0700
# directory, whatever its own mode), then renamed out over the path, and the
# staging directory removed. So whatever a kill -9 or a power cut interrupts
# leaves one shape only: a private directory of the agent's, named for what it
# holds, that no live process has locked — recognised and removed
# (_remove_leftovers) before the kind next changes anything in that directory.
# An flock dies with its process, so a live writer's (another agent's on the
# same host, a concurrent run) is never taken for a leftover, however old.


def _staging_name(token: str) -> str:
    return f"{STAGING_PREFIX}{token}"


@contextlib.contextmanager
def _staging(parent: Parent, path: str) -> Iterator[Parent]:
    """A private, locked directory beside ``parent.name`` to make the new entry in.

    Yields it as a Parent whose ``name`` is what to create there; removed on
    leaving (the entry must have been renamed out or discarded by then).
    """
    with _creating(path):
        descriptor, name = _unused_name(lambda n: _locked_directory(parent.fd, n))
    token = name[len(STAGING_PREFIX) :]
    try:
        yield Parent(descriptor, token, posixpath.join(parent.where, name))
    finally:
        # Removed while still locked, so no cleaner can see it half-done. If
        # this fails, it is a leftover like any other: removed next time.
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=parent.fd)
        os.close(descriptor)


def _locked_directory(dir_fd: int, name: str) -> int:
    """mkdir ``name`` 0700 in ``dir_fd``, open and flock it; its descriptor.

    FileExistsError (so another name is tried) when the name is taken, when a
    cleaner got the directory first (locked, or removed before we locked it),
    or when what the name opens is not the empty private directory just made
    (someone swapped it).
    """
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(name, flags, dir_fd=dir_fd)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(descriptor)
        ours = st.st_uid == os.geteuid() and not stat.S_IMODE(st.st_mode) & 0o077
        if st.st_nlink == 0 or not ours or os.listdir(descriptor):
            raise FileExistsError(errno.EEXIST, f"{name} is not the directory just made")
        os.fchmod(descriptor, 0o700)  # whatever the umask took away from the owner
    except BlockingIOError:
        os.close(descriptor)
        raise FileExistsError(errno.EEXIST, f"{name} is locked by another process") from None
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _unused_name(create: Callable[[str], _T]) -> tuple[_T, str]:
    """``create(name)`` with a fresh ``.plumb-tmp-*`` name, trying others while one exists.

    ``create`` must fail with FileExistsError rather than reuse what is there
    (O_EXCL, mkdir, symlink): the directory may be a user's, who could plant
    a symlink or a file under a name we are about to use.
    """
    for _ in range(_TEMP_ATTEMPTS):
        name = _staging_name(secrets.token_hex(8))
        try:
            return create(name), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no unused temporary name after {_TEMP_ATTEMPTS} tries")


def _remove_leftovers(parent: Parent, log: logging.Logger) -> None:
    """Remove what interrupted runs left in the directory holding ``parent.name``.

    Only the agent's own: a staging directory (see above) that is the agent's,
    0700, unlocked and holding nothing but its one entry; or a temporary of
    Plumb 0.1.0 (``.plumb-<16 hex>``: a file, link or empty directory of the
    agent's, made before this process started). Anything else of those names
    is left alone. Never fails the resource: a leftover that cannot be
    removed is logged and left for next time.
    """
    try:
        listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent.fd)
        try:
            names = [n for n in os.listdir(listing) if n.startswith(TEMP_PREFIX)]
        finally:
            os.close(listing)
    except OSError:
        return
    for name in names:
        try:
            removed = _remove_leftover(parent.fd, name)
        except OSError as exc:
            log.warning("cannot remove %s in %s: %s", name, parent.where, exc.strerror or exc)
            continue
        if removed:
            log.info("removed %s in %s, left by an interrupted run", name, parent.where)


def _remove_leftover(dir_fd: int, name: str) -> bool:
    """Remove ``name`` in ``dir_fd`` if it is a leftover of the agent's; whether it was."""
    staging = _STAGING_NAME.fullmatch(name)
    if staging is None and not _LEGACY_NAME.fullmatch(name):
        return False
    st = os.lstat(name, dir_fd=dir_fd)
    if st.st_uid != os.geteuid():
        return False
    if staging is not None:
        return _remove_staging(dir_fd, name, staging[1], st)
    if st.st_ctime >= _STARTED:  # made or changed since this process started: not 0.1.0's
        return False
    if stat.S_ISDIR(st.st_mode):
        os.rmdir(name, dir_fd=dir_fd)  # its temporary directories were always empty
    elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
    else:
        return False
    return True


def _remove_staging(dir_fd: int, name: str, token: str, st: os.stat_result) -> bool:
    if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o700:
        return False
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(name, flags, dir_fd=dir_fd)
    try:
        seen = os.fstat(descriptor)
        if (seen.st_dev, seen.st_ino, seen.st_uid) != (st.st_dev, st.st_ino, st.st_uid):
            return False  # swapped since lstat
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer's
        entries = os.listdir(descriptor)
        if entries not in ([], [token]):
            return False  # not what the agent leaves: not ours to empty
        if entries:
            # Through the locked directory's descriptor: what is in it is ours,
            # as nobody else can reach into a 0700 directory of the agent's.
            inner = os.lstat(token, dir_fd=descriptor)
            if stat.S_ISDIR(inner.st_mode):
                os.rmdir(token, dir_fd=descriptor)  # a new directory is empty until renamed
            else:
                os.unlink(token, dir_fd=descriptor)
        os.rmdir(name, dir_fd=dir_fd)
        return True
    finally:
        os.close(descriptor)


def _prepare_file(staging: Parent, spec: FileSpec, attributes: _Attributes) -> None:
    """The complete new file, in the staging directory: content, owners, mode, on disk (fsync).

    O_EXCL|O_NOFOLLOW although the staging directory is private: nothing is
    ever written through a name that was already there.
    """
    # Unmanaged content only gets here for a new file: it starts empty.
    content = (spec.content or "").encode()
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    with _creating(spec.path):
        descriptor = os.open(staging.name, flags, 0o600, dir_fd=staging.fd)
    try:
        with _translated(ApplyError, f"write {spec.path}"), open(descriptor, "wb") as stream:
            stream.write(content)
            stream.flush()
            _set_attributes(stream.fileno(), attributes)
            os.fsync(stream.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging.name, dir_fd=staging.fd)
        raise


def _prepare_directory(staging: Parent, spec: FileSpec, attributes: _Attributes) -> None:
    """A new empty directory in the staging directory, owners and mode set."""
    with _creating(spec.path):
        os.mkdir(staging.name, 0o700, dir_fd=staging.fd)
    try:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        with _translated(ApplyError, f"create {spec.path}"):
            descriptor = os.open(staging.name, flags, dir_fd=staging.fd)
            try:
                _set_attributes(descriptor, attributes)
            finally:
                os.close(descriptor)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(staging.name, dir_fd=staging.fd)
        raise


def _prepare_link(staging: Parent, spec: FileSpec, attributes: _Attributes) -> None:
    """A symlink to the spec's target in the staging directory, owned as wanted (lchown)."""
    target = spec.target
    if target is None:  # parse() makes this impossible
        raise ValueError(f"{spec.path}: a link spec without a target")
    with _creating(spec.path):
        os.symlink(target, staging.name, dir_fd=staging.fd)
    if (attributes.uid, attributes.gid) == (-1, -1):
        return
    try:
        with _translated(ApplyError, f"change the owner of {spec.path}"):
            os.chown(
                staging.name,
                attributes.uid,
                attributes.gid,
                dir_fd=staging.fd,
                follow_symlinks=False,
            )
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging.name, dir_fd=staging.fd)
        raise


_PREPARE: dict[EntryType, Callable[[Parent, FileSpec, _Attributes], None]] = {
    EntryType.FILE: _prepare_file,
    EntryType.DIRECTORY: _prepare_directory,
    EntryType.LINK: _prepare_link,
}


def _discard(staging: Parent, entry_type: EntryType) -> None:
    if entry_type is EntryType.DIRECTORY:
        os.rmdir(staging.name, dir_fd=staging.fd)
    else:
        os.unlink(staging.name, dir_fd=staging.fd)


@contextlib.contextmanager
def _creating(path: str) -> Iterator[None]:
    """ApplyError for a failure to create ``path``'s temporary, naming a missing parent."""
    parent = posixpath.dirname(path)
    try:
        yield
    except FileNotFoundError as exc:
        raise ApplyError(f"cannot create {path}: directory {parent} does not exist") from exc
    except OSError as exc:
        raise ApplyError(f"cannot create {path}: {exc.strerror or exc}") from exc


def _sync_directory(parent: Parent, path: str) -> None:
    """fsync the directory so the rename or unlink itself survives a crash."""
    with _translated(ApplyError, f"sync the directory of {path}"):
        # The walk's descriptor is O_PATH, which fsync refuses: open it for reading.
        descriptor = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent.fd)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _remove(parent: Parent, spec: FileSpec, state: FileState) -> None:
    """Make ``path`` absent: unlink a file or link (never its target), remove a directory."""
    if state.type is FileType.DIRECTORY:
        _remove_directory(parent, spec, "remove")
    else:
        _unlink(parent, spec.path, "remove")
    _sync_directory(parent, spec.path)


def _unlink(parent: Parent, path: str, verb: str) -> None:
    """Unlink a file or a symlink (never what it points to); "already gone" is no error."""
    with _translated(ApplyError, f"{verb} {path}"), contextlib.suppress(FileNotFoundError):
        os.unlink(parent.name, dir_fd=parent.fd)


def _remove_directory(parent: Parent, spec: FileSpec, verb: str) -> None:
    """rmdir, or with ``force`` the whole tree; a non-empty directory is otherwise refused."""
    if spec.force:
        _remove_tree(parent, spec.path, verb)
        return
    try:
        os.rmdir(parent.name, dir_fd=parent.fd)
    except FileNotFoundError:
        pass  # already gone: the way is clear
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise ApplyError(
                f"refusing to {verb} {spec.path}: it is a directory that is not empty "
                "(force: true would remove it with everything in it)"
            ) from exc
        raise ApplyError(f"cannot {verb} {spec.path}: {exc.strerror or exc}") from exc


def _remove_tree(parent: Parent, path: str, verb: str) -> None:
    """Remove a directory with everything in it, unless a filesystem is mounted in it.

    shutil.rmtree never follows a symlink inside the tree (it walks with
    directory descriptors, from ``parent``'s), but it does descend into
    mount points, where it would empty another filesystem: those are refused
    first. A mount made between the check and the removal is not seen.
    """
    with _translated(ApplyError, f"{verb} {path}"):
        real = _real_path(parent)
        with open(_MOUNTINFO, encoding="utf-8", errors="surrogateescape") as stream:
            mounted = mount_points_under(stream.read(), real)
        if mounted:
            below = posixpath.relpath(mounted[0], real)
            inside = path if below == "." else posixpath.join(path, below)
            raise ApplyError(f"refusing to {verb} {path}: a filesystem is mounted at {inside}")
        shutil.rmtree(parent.name, dir_fd=parent.fd)


def _real_path(parent: Parent) -> str:
    """Where the directory ``parent.name`` is, as the kernel names it (for mountinfo).

    Read from the descriptor, not resolved from a path string, so it is the
    directory that was opened without following a symlink.
    """
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    descriptor = os.open(parent.name, flags, dir_fd=parent.fd)
    try:
        return os.readlink(f"/proc/self/fd/{descriptor}")
    finally:
        os.close(descriptor)


def mount_points_under(mountinfo: str, directory: str) -> list[str]:
    """The mount points in ``mountinfo`` (/proc/self/mountinfo) at or below ``directory``."""
    directory = directory.rstrip("/") or "/"
    below = directory if directory == "/" else directory + "/"
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
        if point == directory or point.startswith(below):
            found.append(point)
    return found


# The kernel writes space, tab, newline and backslash in mount points as \ooo.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@contextlib.contextmanager
def _translated(error: type[OperationError], action: str) -> Iterator[None]:
    """Turn an OSError into ``error`` naming the action, the path and the OS's reason."""
    try:
        yield
    except OSError as exc:
        raise error(f"cannot {action}: {exc.strerror or exc}") from exc


register(FileKind())
