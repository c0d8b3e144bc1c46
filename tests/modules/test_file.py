"""The file kind: pure parse and diff tables, then the real filesystem under tmp_path."""

from __future__ import annotations

import dataclasses
import grp
import hashlib
import os
import pwd
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modules import registry
from modules.base import Change, Context
from modules.errors import ApplyError, ReadError, SpecError
from modules.file import (
    CONTENT_KEPT_LIMIT,
    TEMP_PREFIX,
    Account,
    FileKind,
    FileSpec,
    FileState,
    FileType,
    type_of,
)
from modules.spec import Presence
from tests.modules.cases import Fails, check_parse
from tests.modules.watching import Watching

KIND = FileKind()
ROOT = Account(0, "root")
NOBODY = Account(65534, "nobody")
NOGROUP = Account(65534, "nogroup")
ABSENT = Presence.ABSENT


def fingerprint(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()[:12]} ({len(data)} bytes)"


def on_disk(data: bytes = b"hello\n", **fields: Any) -> FileState:
    """A regular file holding ``data`` as read() would describe it (content managed)."""
    base = FileState(
        FileType.FILE,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content=data,
        mode=0o644,
        owner=ROOT,
        group=ROOT,
    )
    return dataclasses.replace(base, **fields)


# --- parse -------------------------------------------------------------------


PARSE_CASES: list[tuple[str, Any, FileSpec | Fails]] = [
    ("minimal", {"path": "/etc/motd"}, FileSpec("/etc/motd")),
    (
        "everything",
        {"path": "/etc/motd", "content": "hi\n", "mode": "0640", "owner": "root", "group": "adm"},
        FileSpec("/etc/motd", content="hi\n", mode=0o640, owner="root", group="adm"),
    ),
    ("path normalised", {"path": "/etc//./motd"}, FileSpec("/etc/motd")),
    (
        "numeric ids",
        {"path": "/x", "owner": "0", "group": "65534"},
        FileSpec("/x", owner="0", group="65534"),
    ),
    ("empty content", {"path": "/x", "content": ""}, FileSpec("/x", content="")),
    ("absent", {"path": "/x", "state": "absent"}, FileSpec("/x", state=ABSENT)),
    ("path missing", {"content": "x"}, Fails("path", "required field is missing")),
    ("path relative", {"path": "etc/motd"}, Fails("path", "absolute path")),
    ("path escapes", {"path": "/etc/../../x"}, Fails("path", "'..' is not allowed")),
    ("path not string", {"path": 7}, Fails("path", "expected a string, got integer 7")),
    ("state unknown", {"path": "/x", "state": "gone"}, Fails("state", "one of present, absent")),
    ("content int", {"path": "/x", "content": 5}, Fails("content", "got integer 5")),
    ("mode unquoted 0644", {"path": "/x", "mode": 420}, Fails("mode", "quote it")),
    ("mode unquoted 644", {"path": "/x", "mode": 644}, Fails("mode", "got integer 644")),
    ("mode bad digits", {"path": "/x", "mode": "0x1ff"}, Fails("mode", "octal digits")),
    ("owner int", {"path": "/x", "owner": 0}, Fails("owner", 'quote numeric ids, e.g. owner: "0"')),
    ("owner with space", {"path": "/x", "owner": "a b"}, Fails("owner", "user name or numeric id")),
    ("group with colon", {"path": "/x", "group": "a:b"}, Fails("group", "group name or numeric")),
    ("owner option-like", {"path": "/x", "owner": "-r"}, Fails("owner", "'-r'")),
    ("owner empty", {"path": "/x", "owner": ""}, Fails("owner", "user name or numeric id")),
    ("id out of range", {"path": "/x", "owner": "4294967295"}, Fails("owner", "out of range")),
    (
        "absent with content",
        {"path": "/x", "state": "absent", "content": ""},
        Fails("content", "not allowed with state: absent"),
    ),
    (
        "absent with mode",
        {"path": "/x", "state": "absent", "mode": "0644"},
        Fails("mode", "absent"),
    ),
    (
        "absent with group",
        {"path": "/x", "state": "absent", "group": "root"},
        Fails("group", "absent"),
    ),
    (
        "unknown field",
        {"path": "/x", "contnet": "hi"},
        Fails(
            "contnet", "unknown field 'contnet' (allowed: content, group, mode, owner, path, state)"
        ),
    ),
    ("not a mapping", "/etc/motd", Fails("", "expected a mapping, got string")),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse(raw: Any, expected: FileSpec | Fails) -> None:
    check_parse(KIND, raw, expected)


def test_docstring_example_parses_from_yaml() -> None:
    text = '{path: /etc/motd, content: "hello\\n", mode: "0644", owner: root, group: root}'
    spec = KIND.parse(yaml.safe_load(text))
    assert spec == FileSpec("/etc/motd", content="hello\n", mode=0o644, owner="root", group="root")


def test_unquoted_yaml_mode_is_explained() -> None:
    # YAML 1.1 reads a leading-zero number as octal: the user meant 0644, we get 420.
    with pytest.raises(SpecError, match=r"got integer 420 \(quote it"):
        KIND.parse(yaml.safe_load("{path: /x, mode: 0644}"))


def test_registered_under_its_name() -> None:
    assert isinstance(registry.get("file"), FileKind)


# --- diff (pure) ---------------------------------------------------------------

BIG = b"x" * (CONTENT_KEPT_LIMIT + 1)
LONG = "a line that is rather longer than sixty characters, so it is hashed\n"

DIFF_CASES: list[tuple[str, FileSpec, FileState, list[Change]]] = [
    ("converged", FileSpec("/x", content="hello\n", mode=0o644), on_disk(), []),
    ("unmanaged fields ignored", FileSpec("/x"), on_disk(b"other", mode=0o600), []),
    ("absent and absent", FileSpec("/x", state=ABSENT), FileState(FileType.ABSENT), []),
    (
        "remove file",
        FileSpec("/x", state=ABSENT),
        on_disk(),
        [Change("state", "present", "absent")],
    ),
    (
        "remove symlink",
        FileSpec("/x", state=ABSENT),
        FileState(FileType.SYMLINK),
        [Change("state", "symlink", "absent")],
    ),
    (
        "create with everything",
        FileSpec("/x", content="hello\n", mode=0o600, owner="root", group="0"),
        FileState(FileType.ABSENT, wanted_owner=ROOT, wanted_group=ROOT),
        [
            Change("state", "absent", "present"),
            Change("content", "absent", '"hello\\n"'),
            Change("mode", "absent", "0600"),
            Change("owner", "absent", "root(0)"),
            Change("group", "absent", "root(0)"),
        ],
    ),
    (
        "create with long content",
        FileSpec("/x", content=LONG),
        FileState(FileType.ABSENT),
        [
            Change("state", "absent", "present"),
            Change("content", "absent", fingerprint(LONG.encode())),
        ],
    ),
    (
        "directory in the way",
        FileSpec("/x", mode=0o644),
        FileState(FileType.DIRECTORY),
        [Change("state", "directory", "present"), Change("mode", "directory", "0644")],
    ),
    (
        "symlink in the way",
        FileSpec("/x"),
        FileState(FileType.SYMLINK),
        [Change("state", "symlink", "present")],
    ),
    (
        "short content",
        FileSpec("/x", content="new\n"),
        on_disk(b"old\n"),
        [Change("content", '"old\\n"', '"new\\n"')],
    ),
    (
        "multi-line content is hashed",
        FileSpec("/x", content="a\nb\n"),
        on_disk(b"a\n"),
        [Change("content", fingerprint(b"a\n"), fingerprint(b"a\nb\n"))],
    ),
    (
        "long desired content is hashed on both sides",
        FileSpec("/x", content=LONG),
        on_disk(b"old\n"),
        [Change("content", fingerprint(b"old\n"), fingerprint(LONG.encode()))],
    ),
    (
        "big file not kept",
        FileSpec("/x", content="small"),
        on_disk(BIG, content=None),
        [Change("content", fingerprint(BIG), fingerprint(b"small"))],
    ),
    (
        "binary content is hashed",
        FileSpec("/x", content="ok"),
        on_disk(b"\xff\xfe"),
        [Change("content", fingerprint(b"\xff\xfe"), fingerprint(b"ok"))],
    ),
    ("mode", FileSpec("/x", mode=0o644), on_disk(mode=0o600), [Change("mode", "0600", "0644")]),
    (
        "setuid mode",
        FileSpec("/x", mode=0o4755),
        on_disk(mode=0o755),
        [Change("mode", "0755", "4755")],
    ),
    (
        "owner and group",
        FileSpec("/x", owner="nobody", group="nogroup"),
        on_disk(wanted_owner=NOBODY, wanted_group=NOGROUP),
        [Change("owner", "root(0)", "nobody(65534)"), Change("group", "root(0)", "nogroup(65534)")],
    ),
    (
        "owner by id without a name",
        FileSpec("/x", owner="4242"),
        on_disk(owner=Account(4241), wanted_owner=Account(4242)),
        [Change("owner", "4241", "4242")],
    ),
    (
        "same id, other name is converged",
        FileSpec("/x", owner="toor"),
        on_disk(wanted_owner=Account(0, "toor")),
        [],
    ),
]


@pytest.mark.parametrize(
    ("spec", "state", "expected"), [c[1:] for c in DIFF_CASES], ids=[c[0] for c in DIFF_CASES]
)
def test_diff(spec: FileSpec, state: FileState, expected: list[Change]) -> None:
    assert KIND.diff(spec, state) == expected


def test_diff_needs_resolved_owner() -> None:
    # A state built by hand without the owner resolved would silently hide drift.
    with pytest.raises(ValueError, match=r"use FileKind\.read"):
        KIND.diff(FileSpec("/x", owner="root"), on_disk())


@pytest.mark.parametrize(
    ("st_mode", "expected"),
    [
        (stat.S_IFREG | 0o644, FileType.FILE),
        (stat.S_IFDIR | 0o755, FileType.DIRECTORY),
        (stat.S_IFLNK | 0o777, FileType.SYMLINK),
        (stat.S_IFIFO | 0o600, FileType.SPECIAL),
        (stat.S_IFCHR | 0o600, FileType.SPECIAL),
    ],
)
def test_type_of(st_mode: int, expected: FileType) -> None:
    assert type_of(st_mode) is expected


# --- the real filesystem ---------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    (tmp_path / "etc").mkdir()
    return Context(root=tmp_path)


def converge(ctx: Context, **raw: Any) -> list[Change]:
    """One enforce run: read, diff, apply; then check that a second run finds nothing."""
    spec = KIND.parse(raw)
    changes = KIND.diff(spec, KIND.read(ctx, spec))
    if changes:
        KIND.apply(ctx, spec, KIND.read(ctx, spec), changes)
    assert KIND.diff(spec, KIND.read(ctx, spec)) == []
    return changes


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX)]


def test_create(ctx: Context, tmp_path: Path) -> None:
    umask = os.umask(0o077)  # the mode must not depend on the agent's umask
    try:
        changes = converge(ctx, path="/etc/motd", content="hello\n")
    finally:
        os.umask(umask)
    assert changes[0] == Change("state", "absent", "present")
    target = tmp_path / "etc/motd"
    assert target.read_bytes() == b"hello\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert leftovers(target.parent) == []


def test_converged_file_has_no_changes(ctx: Context, tmp_path: Path) -> None:
    raw = {"path": "/etc/motd", "content": "hello\n", "mode": "0600", "owner": "root"}
    assert converge(ctx, **raw) != []
    inode = (tmp_path / "etc/motd").stat().st_ino
    assert converge(ctx, **raw) == []
    assert (tmp_path / "etc/motd").stat().st_ino == inode


def test_content_update_replaces_atomically(ctx: Context, tmp_path: Path) -> None:
    target = tmp_path / "etc/motd"
    target.write_bytes(b"old\n")
    inode = target.stat().st_ino
    changes = converge(ctx, path="/etc/motd", content="new\n")
    assert changes == [Change("content", '"old\\n"', '"new\\n"')]
    assert target.read_bytes() == b"new\n"
    assert target.stat().st_ino != inode  # renamed into place, not rewritten
    assert leftovers(target.parent) == []


def test_rewrite_keeps_unmanaged_mode_and_owner(ctx: Context, tmp_path: Path) -> None:
    target = tmp_path / "etc/motd"
    target.write_bytes(b"old\n")
    os.chown(target, NOBODY.id, NOGROUP.id)
    target.chmod(0o640)
    converge(ctx, path="/etc/motd", content="new\n")
    st = target.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, NOBODY.id, NOGROUP.id)


def test_mode_only_change_keeps_inode(ctx: Context, tmp_path: Path) -> None:
    target = tmp_path / "etc/motd"
    target.write_bytes(b"keep\n")
    target.chmod(0o600)
    inode = target.stat().st_ino
    changes = converge(ctx, path="/etc/motd", content="keep\n", mode="0644")
    assert changes == [Change("mode", "0600", "0644")]
    assert target.stat().st_ino == inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_owner_and_group_change(ctx: Context, tmp_path: Path) -> None:
    target = tmp_path / "etc/motd"
    target.write_bytes(b"x")
    os.chown(target, 0, 0)
    inode = target.stat().st_ino
    nobody = pwd.getpwnam("nobody").pw_uid
    nogroup = grp.getgrnam("nogroup").gr_gid
    changes = converge(ctx, path="/etc/motd", owner="nobody", group="nogroup")
    assert changes == [
        Change("owner", "root(0)", f"nobody({nobody})"),
        Change("group", "root(0)", f"nogroup({nogroup})"),
    ]
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, st.st_ino) == (nobody, nogroup, inode)


def test_setuid_bit_survives_owner_change(ctx: Context, tmp_path: Path) -> None:
    # chown(2) clears setuid; the mode must be set after the owner, in place and on create.
    target = tmp_path / "etc/tool"
    target.write_bytes(b"x")
    converge(ctx, path="/etc/tool", mode="4755", owner="nobody")
    assert stat.S_IMODE(target.stat().st_mode) == 0o4755
    converge(ctx, path="/etc/tool2", content="y", mode="2755", group="nogroup")
    assert stat.S_IMODE((tmp_path / "etc/tool2").stat().st_mode) == 0o2755


def test_absent_removes(ctx: Context, tmp_path: Path) -> None:
    target = tmp_path / "etc/motd"
    target.write_bytes(b"x")
    assert converge(ctx, path="/etc/motd", state="absent") == [Change("state", "present", "absent")]
    assert not target.exists()
    assert converge(ctx, path="/etc/motd", state="absent") == []


@pytest.mark.parametrize("state", ["present", "absent"])
def test_directory_is_refused_and_left_intact(ctx: Context, tmp_path: Path, state: str) -> None:
    directory = tmp_path / "etc/motd"
    directory.mkdir()
    (directory / "inside").write_bytes(b"keep")
    spec = KIND.parse({"path": "/etc/motd", "state": state})
    before = KIND.read(ctx, spec)
    assert KIND.diff(spec, before) == [Change("state", "directory", state)]
    with pytest.raises(ApplyError, match=r"refusing to \w+ /etc/motd: it is a directory"):
        KIND.apply(ctx, spec, before, KIND.diff(spec, before))
    assert (directory / "inside").read_bytes() == b"keep"


def test_fifo_is_refused(ctx: Context, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "etc/pipe")
    spec = KIND.parse({"path": "/etc/pipe", "content": "x"})
    state = KIND.read(ctx, spec)  # must not block on the FIFO
    assert state.type is FileType.SPECIAL
    with pytest.raises(ApplyError, match="it is a special file"):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    assert stat.S_ISFIFO(os.lstat(tmp_path / "etc/pipe").st_mode)


def test_directory_appearing_after_read_is_not_clobbered(ctx: Context, tmp_path: Path) -> None:
    spec = KIND.parse({"path": "/etc/motd", "content": "x"})
    state = KIND.read(ctx, spec)
    (tmp_path / "etc/motd").mkdir()
    with pytest.raises(ApplyError, match="cannot replace /etc/motd: Is a directory"):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    assert (tmp_path / "etc/motd").is_dir()
    assert leftovers(tmp_path / "etc") == []


def test_missing_parent_directory(ctx: Context, tmp_path: Path) -> None:
    spec = KIND.parse({"path": "/srv/app/config", "content": "x"})
    state = KIND.read(ctx, spec)
    assert state.type is FileType.ABSENT
    with pytest.raises(ApplyError, match="directory /srv/app does not exist"):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    assert not (tmp_path / "srv").exists()


def test_symlink_is_replaced_not_written_through(ctx: Context, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    victim.chmod(0o600)
    link = tmp_path / "etc/motd"
    link.symlink_to(victim)
    changes = converge(ctx, path="/etc/motd", content="hello\n", mode="0644")
    assert changes[0] == Change("state", "symlink", "present")
    assert not link.is_symlink()
    assert link.read_bytes() == b"hello\n"
    assert victim.read_bytes() == b"original"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_absent_removes_symlink_not_target(ctx: Context, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    (tmp_path / "etc/motd").symlink_to(victim)
    converge(ctx, path="/etc/motd", state="absent")
    assert not (tmp_path / "etc/motd").is_symlink()
    assert victim.read_bytes() == b"original"


def test_read_keeps_only_small_content(ctx: Context, tmp_path: Path) -> None:
    data = os.urandom(CONTENT_KEPT_LIMIT + 1)
    (tmp_path / "etc/big").write_bytes(data)
    state = KIND.read(ctx, KIND.parse({"path": "/etc/big", "content": ""}))
    assert (state.size, state.sha256, state.content) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
        None,
    )
    small = KIND.read(ctx, KIND.parse({"path": "/etc/big", "mode": "0644"}))
    assert (small.sha256, small.content) == (None, None)  # content not managed: not read


def test_read_unknown_user(ctx: Context) -> None:
    spec = KIND.parse({"path": "/etc/motd", "owner": "no-such-user-here"})
    with pytest.raises(ReadError, match="no such user 'no-such-user-here'"):
        KIND.read(ctx, spec)


def test_read_error_names_the_path(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "etc/motd").write_bytes(b"a file, not a directory")
    spec = KIND.parse({"path": "/etc/motd/inner"})
    with pytest.raises(ReadError, match="cannot read /etc/motd/inner: Not a directory") as caught:
        KIND.read(ctx, spec)
    assert isinstance(caught.value.__cause__, OSError)


# --- watch: real inotify -------------------------------------------------------


@pytest.fixture
def watching(ctx: Context, tmp_path: Path) -> Iterator[Callable[..., Watching]]:
    started: list[Watching] = []

    def start(*paths: str, snapshot: Callable[[], Any] | None = None) -> Watching:
        watcher = Watching(KIND, ctx, [KIND.parse({"path": path}) for path in paths], snapshot)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.finish()


def test_watch_reports_changes_to_the_managed_file(
    ctx: Context, tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    target = tmp_path / "etc/app.conf"
    target.write_text("one\n")
    watcher = watching("/etc/app.conf")
    watcher.prime(lambda: os.utime(target))

    assert watcher.changed_by(lambda: target.write_text("two\n"))  # close_write
    assert watcher.changed_by(lambda: target.chmod(0o600))  # attrib
    replacement = tmp_path / "etc/.edit.tmp"
    replacement.write_text("three\n")  # not managed: only the rename is reported
    assert watcher.changed_by(lambda: os.replace(replacement, target))  # a new inode
    assert watcher.changed_by(lambda: target.write_text("four\n"))  # still watched after it
    assert watcher.changed_by(target.unlink)
    assert watcher.changed_by(lambda: target.write_text("back\n"))  # created again


def test_watch_reports_the_agents_own_atomic_apply(
    ctx: Context, tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    """The kind reports every change; telling its own apart is the agent's job."""
    target = tmp_path / "etc/motd"
    target.write_text("old\n")
    watcher = watching("/etc/motd")
    watcher.prime(lambda: os.utime(target))
    assert watcher.changed_by(lambda: converge(ctx, path="/etc/motd", content="new\n"))


def test_watch_ignores_unrelated_files_in_the_same_directory(
    ctx: Context, tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    target = tmp_path / "etc/app.conf"
    target.write_text("managed\n")
    watcher = watching("/etc/app.conf", snapshot=target.read_text)
    watcher.prime(lambda: os.utime(target))

    neighbour = tmp_path / "etc/neighbour.conf"
    neighbour.write_text("x")
    neighbour.chmod(0o600)
    os.replace(neighbour, tmp_path / "etc/renamed.conf")
    (tmp_path / "etc/renamed.conf").unlink()
    # Not synchronisation: the absence of a call, given ample time to make one.
    assert not watcher.wait_calls(1, timeout=0.5)
    target.write_text("changed\n")  # and the watcher is still there
    assert watcher.wait_calls(1)
    assert watcher.seen == ["changed\n"]


def test_watch_follows_a_missing_parent_directory(
    ctx: Context, tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    """A missing parent is watched for through its nearest existing ancestor."""
    sentinel = tmp_path / "etc/motd"
    sentinel.write_text("x")
    watcher = watching("/etc/motd", "/srv/app/data.conf")
    watcher.prime(lambda: os.utime(sentinel))

    assert watcher.changed_by(lambda: (tmp_path / "srv").mkdir())
    assert watcher.changed_by(lambda: (tmp_path / "srv/app").mkdir())
    assert watcher.changed_by(lambda: (tmp_path / "srv/app/data.conf").write_text("y"))
    # The directory itself going away is a change to what it held.
    assert watcher.changed_by(lambda: os.rename(tmp_path / "srv/app", tmp_path / "srv/old"))
    assert watcher.changed_by(lambda: (tmp_path / "srv/app").mkdir())
    assert watcher.changed_by(lambda: (tmp_path / "srv/app/data.conf").write_text("z"))


def test_watch_stops_promptly(
    ctx: Context, tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    target = tmp_path / "etc/motd"
    target.write_text("x")
    watcher = watching("/etc/motd")
    watcher.prime(lambda: os.utime(target))
    started = time.monotonic()
    watcher.stop.set()
    watcher.thread.join(5)
    assert not watcher.thread.is_alive()
    assert time.monotonic() - started < 1.0
