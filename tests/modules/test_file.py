"""The file kind: pure parse and diff tables, then the real filesystem under tmp_path."""

from __future__ import annotations

import dataclasses
import grp
import hashlib
import os
import pwd
import stat
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import modules.file
from modules import registry
from modules.base import Change, Context
from modules.errors import ApplyError, ReadError, SpecError
from modules.file import (
    CONTENT_KEPT_LIMIT,
    TEMP_PREFIX,
    Account,
    EntryType,
    FileKind,
    FileSpec,
    FileState,
    FileType,
    mount_points_under,
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
DIRECTORY = EntryType.DIRECTORY
LINK = EntryType.LINK


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


def a_directory(**fields: Any) -> FileState:
    """A directory as read() would describe it."""
    base = FileState(FileType.DIRECTORY, mode=0o755, owner=ROOT, group=ROOT)
    return dataclasses.replace(base, **fields)


def a_link(target: str, **fields: Any) -> FileState:
    """A symlink to ``target`` as read() would describe it (no mode: Linux has none for links)."""
    return dataclasses.replace(
        FileState(FileType.LINK, owner=ROOT, group=ROOT, target=target), **fields
    )


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
            "contnet",
            "unknown field 'contnet' "
            "(allowed: content, force, group, mode, owner, path, state, target, type)",
        ),
    ),
    ("not a mapping", "/etc/motd", Fails("", "expected a mapping, got string")),
    # type: directory and link
    ("type file spelled out", {"path": "/x", "type": "file"}, FileSpec("/x")),
    (
        "directory",
        {"path": "/srv/app", "type": "directory", "mode": "2775", "owner": "root", "group": "0"},
        FileSpec("/srv/app", type=DIRECTORY, mode=0o2775, owner="root", group="0"),
    ),
    (
        "directory with force false",
        {"path": "/srv/app", "type": "directory", "force": False},
        FileSpec("/srv/app", type=DIRECTORY),
    ),
    (
        "link",
        {"path": "/srv/current", "type": "link", "target": "/srv/releases/42", "owner": "root"},
        FileSpec("/srv/current", type=LINK, target="/srv/releases/42", owner="root"),
    ),
    (
        "link target taken as it is",
        {"path": "/x", "type": "link", "target": "../a//b/./c"},
        FileSpec("/x", type=LINK, target="../a//b/./c"),
    ),
    (
        "link replacing a directory",
        {"path": "/x", "type": "link", "target": "y", "force": True},
        FileSpec("/x", type=LINK, target="y", force=True),
    ),
    ("file with force", {"path": "/x", "force": True}, FileSpec("/x", force=True)),
    (
        "absent with force",
        {"path": "/x", "state": "absent", "force": True},
        FileSpec("/x", state=ABSENT, force=True),
    ),
    (
        "type unknown",
        {"path": "/x", "type": "symlink"},
        Fails("type", "expected one of file, directory, link, got string 'symlink'"),
    ),
    (
        "content of a directory",
        {"path": "/x", "type": "directory", "content": "hi"},
        Fails("content", "not allowed with type: directory (a directory has no content"),
    ),
    (
        "content of a link",
        {"path": "/x", "type": "link", "target": "y", "content": "hi"},
        Fails("content", "not allowed with type: link"),
    ),
    (
        "target of a file",
        {"path": "/x", "target": "y"},
        Fails("target", "only allowed with type: link"),
    ),
    (
        "target of a directory",
        {"path": "/x", "type": "directory", "target": "y"},
        Fails("target", "only allowed with type: link"),
    ),
    (
        "link without target",
        {"path": "/x", "type": "link"},
        Fails("target", "required with type: link"),
    ),
    (
        "mode of a link",
        {"path": "/x", "type": "link", "target": "y", "mode": "0777"},
        Fails("mode", "not allowed with type: link (Linux gives every symlink mode 0777"),
    ),
    (
        "force on a directory",
        {"path": "/x", "type": "directory", "force": True},
        Fails("force", "a directory resource never removes a directory"),
    ),
    (
        "force not a boolean",
        {"path": "/x", "force": "yes"},
        Fails("force", "expected a boolean (true or false), got string 'yes'"),
    ),
    ("target empty", {"path": "/x", "type": "link", "target": ""}, Fails("target", "got ''")),
    (
        "target with NUL",
        {"path": "/x", "type": "link", "target": "a\0b"},
        Fails("target", "cannot contain a NUL character"),
    ),
    (
        "target too long",
        {"path": "/x", "type": "link", "target": "a" * 4096},
        Fails("target", "is 4096 bytes long (at most 4095)"),
    ),
    (
        "target not a string",
        {"path": "/x", "type": "link", "target": 42},
        Fails("target", "expected a string, got integer 42"),
    ),
    (
        "absent with type",
        {"path": "/x", "state": "absent", "type": "directory"},
        Fails("type", "not allowed with state: absent (whatever is at path is removed"),
    ),
    (
        "absent with target",
        {"path": "/x", "state": "absent", "target": "y"},
        Fails("target", "not allowed with state: absent"),
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse(raw: Any, expected: FileSpec | Fails) -> None:
    check_parse(KIND, raw, expected)


def test_docstring_example_parses_from_yaml() -> None:
    doc = modules.file.__doc__ or ""
    example = doc.split("Example manifest::\n")[1].split("\nSpec fields:")[0]
    resources = yaml.safe_load(textwrap.dedent(example))
    assert [KIND.parse(resource["spec"]) for resource in resources] == [
        FileSpec("/etc/motd", content="hello\n", mode=0o644, owner="root", group="root"),
        FileSpec("/srv/app", type=DIRECTORY, mode=0o750, owner="root", group="adm"),
        FileSpec("/srv/app/current", type=LINK, target="releases/42"),
        FileSpec("/var/cache/old-app", state=ABSENT, force=True),
    ]


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
        a_link("/y"),
        [Change("state", "link", "absent")],
    ),
    (
        "remove directory",
        FileSpec("/x", state=ABSENT, force=True),
        a_directory(),
        [Change("state", "directory", "absent")],
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
        a_directory(),
        [Change("type", "directory", "file"), Change("mode", "directory", "0644")],
    ),
    (
        "symlink in the way",
        FileSpec("/x", content="hello\n"),
        a_link("/etc/motd"),
        [Change("type", "link", "file"), Change("content", "link", '"hello\\n"')],
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
    # type: directory
    (
        "directory converged",
        FileSpec("/d", type=DIRECTORY, mode=0o755, owner="root"),
        a_directory(wanted_owner=ROOT),
        [],
    ),
    (
        "create directory",
        FileSpec("/d", type=DIRECTORY, mode=0o750, group="nogroup"),
        FileState(FileType.ABSENT, wanted_group=NOGROUP),
        [
            Change("state", "absent", "present"),
            Change("mode", "absent", "0750"),
            Change("group", "absent", "nogroup(65534)"),
        ],
    ),
    (
        "directory mode",
        FileSpec("/d", type=DIRECTORY, mode=0o2775),
        a_directory(mode=0o755),
        [Change("mode", "0755", "2775")],
    ),
    (
        "directory owner",
        FileSpec("/d", type=DIRECTORY, owner="nobody"),
        a_directory(wanted_owner=NOBODY),
        [Change("owner", "root(0)", "nobody(65534)")],
    ),
    (
        "file in the way of a directory",
        FileSpec("/d", type=DIRECTORY, mode=0o755, owner="root"),
        on_disk(wanted_owner=ROOT),
        [
            Change("type", "file", "directory"),
            Change("mode", "file", "0755"),
            Change("owner", "file", "root(0)"),
        ],
    ),
    (
        "link in the way of a directory",
        FileSpec("/d", type=DIRECTORY),
        a_link("/elsewhere"),
        [Change("type", "link", "directory")],
    ),
    (
        "special file in the way of a directory",
        FileSpec("/d", type=DIRECTORY),
        FileState(FileType.SPECIAL),
        [Change("type", "special file", "directory")],
    ),
    # type: link
    ("link converged", FileSpec("/l", type=LINK, target="/a"), a_link("/a"), []),
    (
        "link target",
        FileSpec("/l", type=LINK, target="/b"),
        a_link("/a"),
        [Change("target", "/a", "/b")],
    ),
    (
        "relative link target is compared as text",
        FileSpec("/l", type=LINK, target="releases/42"),
        a_link("./releases/42"),
        [Change("target", "./releases/42", "releases/42")],
    ),
    (
        "create link",
        FileSpec("/l", type=LINK, target="/a", owner="nobody"),
        FileState(FileType.ABSENT, wanted_owner=NOBODY),
        [
            Change("state", "absent", "present"),
            Change("target", "absent", "/a"),
            Change("owner", "absent", "nobody(65534)"),
        ],
    ),
    (
        "link owner and group",
        FileSpec("/l", type=LINK, target="/a", owner="nobody", group="root"),
        a_link("/a", wanted_owner=NOBODY, wanted_group=ROOT),
        [Change("owner", "root(0)", "nobody(65534)")],
    ),
    (
        "file in the way of a link",
        FileSpec("/l", type=LINK, target="/a"),
        on_disk(),
        [Change("type", "file", "link"), Change("target", "file", "/a")],
    ),
    (
        "directory in the way of a link",
        FileSpec("/l", type=LINK, target="/a"),
        a_directory(),
        [Change("type", "directory", "link"), Change("target", "directory", "/a")],
    ),
    (
        "unprintable target is quoted",
        FileSpec("/l", type=LINK, target="/a"),
        a_link("/b\n\udcff"),
        [Change("target", '"/b\\n\\udcff"', "/a")],
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
        (stat.S_IFLNK | 0o777, FileType.LINK),
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


@pytest.mark.parametrize(
    ("raw", "change"),
    [
        ({"content": "x"}, Change("type", "directory", "file")),
        ({"type": "link", "target": "/x"}, Change("type", "directory", "link")),
        ({"state": "absent"}, Change("state", "directory", "absent")),
    ],
    ids=["file", "link", "absent"],
)
def test_non_empty_directory_is_refused_and_left_intact(
    ctx: Context, tmp_path: Path, raw: dict[str, Any], change: Change
) -> None:
    directory = tmp_path / "etc/motd"
    directory.mkdir()
    (directory / "inside").write_bytes(b"keep")
    spec = KIND.parse({"path": "/etc/motd", **raw})
    before = KIND.read(ctx, spec)
    assert KIND.diff(spec, before)[0] == change
    message = r"refusing to \w+ /etc/motd: it is a directory that is not empty \(force: true"
    with pytest.raises(ApplyError, match=message):
        KIND.apply(ctx, spec, before, KIND.diff(spec, before))
    assert (directory / "inside").read_bytes() == b"keep"
    assert leftovers(tmp_path / "etc") == []


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
    # Said in the change already, so a dry run (plumb plan) shows why it will fail.
    assert KIND.diff(spec, state)[0] == Change(
        "state", "absent (directory /srv/app does not exist)", "present"
    )
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
    assert changes[0] == Change("type", "link", "file")
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


# --- type: directory, on the real filesystem --------------------------------------


def test_create_directory(ctx: Context, tmp_path: Path) -> None:
    umask = os.umask(0o077)  # the mode must not depend on the agent's umask
    try:
        changes = converge(ctx, path="/etc/app.d", type="directory", mode="2775", group="nogroup")
    finally:
        os.umask(umask)
    nogroup = grp.getgrnam("nogroup").gr_gid
    assert changes == [
        Change("state", "absent", "present"),
        Change("mode", "absent", "2775"),
        Change("group", "absent", f"nogroup({nogroup})"),
    ]
    st = os.lstat(tmp_path / "etc/app.d")
    assert stat.S_ISDIR(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o2775, 0, nogroup)
    assert leftovers(tmp_path / "etc") == []


def test_new_directory_gets_0755(ctx: Context, tmp_path: Path) -> None:
    converge(ctx, path="/etc/app.d", type="directory")
    assert stat.S_IMODE(os.lstat(tmp_path / "etc/app.d").st_mode) == 0o755


def test_directory_attributes_change_in_place(ctx: Context, tmp_path: Path) -> None:
    directory = tmp_path / "etc/app.d"
    directory.mkdir(mode=0o700)
    (directory / "keep.conf").write_text("kept\n")
    inode = directory.stat().st_ino
    nobody = pwd.getpwnam("nobody").pw_uid
    changes = converge(ctx, path="/etc/app.d", type="directory", mode="0750", owner="nobody")
    assert changes == [
        Change("mode", "0700", "0750"),
        Change("owner", "root(0)", f"nobody({nobody})"),
    ]
    st = directory.stat()
    assert (st.st_ino, stat.S_IMODE(st.st_mode), st.st_uid) == (inode, 0o750, nobody)
    assert (directory / "keep.conf").read_text() == "kept\n"


@pytest.mark.parametrize("kind", ["file", "link"])
def test_directory_replaces_a_file_or_link(ctx: Context, tmp_path: Path, kind: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("original")
    path = tmp_path / "etc/app.d"
    if kind == "file":
        path.write_text("in the way")
    else:
        path.symlink_to(victim)
    changes = converge(ctx, path="/etc/app.d", type="directory", mode="0700")
    assert changes[0] == Change("type", kind, "directory")
    assert stat.S_ISDIR(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700
    assert victim.read_text() == "original"
    assert leftovers(tmp_path / "etc") == []


def test_directory_does_not_replace_a_fifo(ctx: Context, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "etc/pipe")
    spec = KIND.parse({"path": "/etc/pipe", "type": "directory"})
    state = KIND.read(ctx, spec)
    with pytest.raises(ApplyError, match="refusing to replace /etc/pipe: it is a special file"):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    assert stat.S_ISFIFO(os.lstat(tmp_path / "etc/pipe").st_mode)


def test_file_appearing_after_read_is_not_replaced_by_a_directory(
    ctx: Context, tmp_path: Path
) -> None:
    spec = KIND.parse({"path": "/etc/app.d", "type": "directory"})
    state = KIND.read(ctx, spec)
    (tmp_path / "etc/app.d").write_text("someone's")
    with pytest.raises(ApplyError, match=r"cannot replace /etc/app\.d: Not a directory"):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    assert (tmp_path / "etc/app.d").read_text() == "someone's"
    assert leftovers(tmp_path / "etc") == []


def test_directory_needs_its_parent(ctx: Context, tmp_path: Path) -> None:
    spec = KIND.parse({"path": "/srv/app", "type": "directory"})
    state = KIND.read(ctx, spec)
    with pytest.raises(ApplyError, match="cannot create /srv/app: directory /srv does not exist"):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    assert not (tmp_path / "srv").exists()


def test_absent_removes_an_empty_directory(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "etc/app.d").mkdir()
    changes = converge(ctx, path="/etc/app.d", state="absent")
    assert changes == [Change("state", "directory", "absent")]
    assert not (tmp_path / "etc/app.d").exists()


def test_empty_directory_in_the_way_is_replaced(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "etc/motd").mkdir()
    (tmp_path / "etc/current").mkdir()
    assert converge(ctx, path="/etc/motd", content="hi\n")[0] == Change("type", "directory", "file")
    assert (tmp_path / "etc/motd").read_text() == "hi\n"
    converge(ctx, path="/etc/current", type="link", target="motd")
    assert os.readlink(tmp_path / "etc/current") == "motd"


def make_tree(top: Path, outside: Path) -> None:
    """A small tree with a nested directory and symlinks leading out of it."""
    (top / "sub/deeper").mkdir(parents=True)
    (top / "a.conf").write_text("a")
    (top / "sub/deeper/b.conf").write_text("b")
    (top / "sub/to-outside").symlink_to(outside)
    (top / "sub/to-outside-file").symlink_to(outside / "precious")


def test_force_removes_a_tree_without_following_symlinks(ctx: Context, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    make_tree(tmp_path / "etc/old", outside)
    changes = converge(ctx, path="/etc/old", state="absent", force=True)
    assert changes == [Change("state", "directory", "absent")]
    assert not (tmp_path / "etc/old").exists()
    assert (outside / "precious").read_text() == "keep"


def test_force_replaces_a_tree_by_a_link(ctx: Context, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    make_tree(tmp_path / "etc/current", outside)
    converge(ctx, path="/etc/current", type="link", target="releases/2", force=True)
    assert os.readlink(tmp_path / "etc/current") == "releases/2"
    assert (outside / "precious").read_text() == "keep"
    assert leftovers(tmp_path / "etc") == []


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted at /etc/old/sub/mnt under the sandbox root (needs root)."""
    point = tmp_path / "etc/old/sub/mnt"
    point.mkdir(parents=True)
    (tmp_path / "etc/old/a.conf").write_text("a")
    done = subprocess.run(["mount", "-t", "tmpfs", "plumb-test", str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        (point / "other-filesystem").write_text("keep")
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_force_never_empties_a_mounted_filesystem(
    ctx: Context, tmp_path: Path, mounted: Path
) -> None:
    spec = KIND.parse({"path": "/etc/old", "state": "absent", "force": True})
    state = KIND.read(ctx, spec)
    message = "refusing to remove /etc/old: a filesystem is mounted at /etc/old/sub/mnt"
    with pytest.raises(ApplyError, match=message):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    # Refused before anything was removed.
    assert (mounted / "other-filesystem").read_text() == "keep"
    assert (tmp_path / "etc/old/a.conf").read_text() == "a"


@pytest.mark.parametrize(
    ("directory", "expected"),
    [
        ("/srv/old", ["/srv/old", "/srv/old/sub mnt"]),
        ("/srv/old/", ["/srv/old", "/srv/old/sub mnt"]),
        ("/srv", ["/srv/old", "/srv/old/sub mnt"]),
        ("/srv/ol", []),  # a prefix of a name is not "below"
        ("/", ["/", "/proc", "/srv/old", "/srv/old/sub mnt"]),
    ],
)
def test_mount_points_under(directory: str, expected: list[str]) -> None:
    mountinfo = textwrap.dedent(
        """\
        22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
        23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
        41 22 0:40 / /srv/old rw,relatime shared:20 - tmpfs tmpfs rw
        42 41 0:41 / /srv/old/sub\\040mnt rw,relatime shared:21 - tmpfs tmpfs rw
        """
    )
    assert mount_points_under(mountinfo, directory) == expected


# --- type: link, on the real filesystem ---------------------------------------------


def test_create_link(ctx: Context, tmp_path: Path) -> None:
    changes = converge(ctx, path="/etc/current", type="link", target="../releases/42")
    assert changes == [
        Change("state", "absent", "present"),
        Change("target", "absent", "../releases/42"),
    ]
    link = tmp_path / "etc/current"
    assert link.is_symlink()
    assert os.readlink(link) == "../releases/42"  # as given: not resolved, need not exist
    assert leftovers(tmp_path / "etc") == []


def test_link_target_change_replaces_the_link_atomically(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "releases/1").mkdir(parents=True)
    (tmp_path / "releases/1/app").write_text("one")
    link = tmp_path / "etc/current"
    link.symlink_to("/releases/1")
    inode = os.lstat(link).st_ino
    changes = converge(ctx, path="/etc/current", type="link", target="/releases/2")
    assert changes == [Change("target", "/releases/1", "/releases/2")]
    assert os.readlink(link) == "/releases/2"
    assert os.lstat(link).st_ino != inode  # renamed into place
    assert (tmp_path / "releases/1/app").read_text() == "one"  # the old target is untouched
    assert leftovers(tmp_path / "etc") == []


def test_link_replaces_a_file_atomically(ctx: Context, tmp_path: Path) -> None:
    path = tmp_path / "etc/current"
    path.write_text("in the way")
    changes = converge(ctx, path="/etc/current", type="link", target="motd")
    assert changes == [Change("type", "file", "link"), Change("target", "file", "motd")]
    assert os.readlink(path) == "motd"


def test_link_owner_is_the_links_own(ctx: Context, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("x")
    os.chown(victim, 0, 0)
    nobody = pwd.getpwnam("nobody").pw_uid
    nogroup = grp.getgrnam("nogroup").gr_gid
    raw = {"path": "/etc/current", "type": "link", "target": str(victim)}
    converge(ctx, **raw)
    changes = converge(ctx, **raw, owner="nobody", group="nogroup")
    assert changes == [
        Change("owner", "root(0)", f"nobody({nobody})"),
        Change("group", "root(0)", f"nogroup({nogroup})"),
    ]
    link = os.lstat(tmp_path / "etc/current")
    assert (link.st_uid, link.st_gid) == (nobody, nogroup)
    assert (victim.stat().st_uid, victim.stat().st_gid) == (0, 0)
    # A new target keeps the unmanaged owner of the link it replaces.
    converge(ctx, path="/etc/current", type="link", target="elsewhere")
    assert os.lstat(tmp_path / "etc/current").st_uid == nobody


def test_read_does_not_follow_a_link(ctx: Context, tmp_path: Path) -> None:
    (tmp_path / "etc/real").mkdir(mode=0o700)
    (tmp_path / "etc/current").symlink_to("real")
    state = KIND.read(ctx, KIND.parse({"path": "/etc/current", "type": "directory"}))
    assert (state.type, state.target, state.mode) == (FileType.LINK, "real", None)


def test_link_needs_its_parent(ctx: Context, tmp_path: Path) -> None:
    spec = KIND.parse({"path": "/srv/current", "type": "link", "target": "x"})
    state = KIND.read(ctx, spec)
    with pytest.raises(ApplyError, match="cannot create /srv/current: directory /srv does not"):
        KIND.apply(ctx, spec, state, KIND.diff(spec, state))


def test_absent_removes_a_link_to_a_directory_not_the_directory(
    ctx: Context, tmp_path: Path
) -> None:
    (tmp_path / "etc/real").mkdir()
    (tmp_path / "etc/real/inside").write_text("keep")
    (tmp_path / "etc/current").symlink_to("real")
    assert converge(ctx, path="/etc/current", state="absent") == [Change("state", "link", "absent")]
    assert not (tmp_path / "etc/current").is_symlink()
    assert (tmp_path / "etc/real/inside").read_text() == "keep"


# --- watch: real inotify -------------------------------------------------------


@pytest.fixture
def watching(ctx: Context, tmp_path: Path) -> Iterator[Callable[..., Watching]]:
    started: list[Watching] = []

    def start(*specs: str | dict[str, Any], snapshot: Callable[[], Any] | None = None) -> Watching:
        raws = [{"path": spec} if isinstance(spec, str) else spec for spec in specs]
        watcher = Watching(KIND, ctx, [KIND.parse(raw) for raw in raws], snapshot)
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


def test_watch_reports_changes_to_a_managed_directory(
    ctx: Context, tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    directory = tmp_path / "etc/app.d"
    directory.mkdir()
    watcher = watching({"path": "/etc/app.d", "type": "directory", "mode": "0755"})
    watcher.prime(lambda: os.utime(directory))

    assert watcher.changed_by(lambda: directory.chmod(0o700))  # its own mode
    assert watcher.changed_by(lambda: os.chown(directory, 65534, 65534))  # its own owners
    assert watcher.changed_by(directory.rmdir)
    assert watcher.changed_by(directory.mkdir)  # and still watched after it
    assert watcher.changed_by(lambda: directory.chmod(0o750))
    # Replaced by a file: a new inode at the path, of another type.
    assert watcher.changed_by(lambda: (directory.rmdir(), directory.write_text("x")))


def test_watch_reports_changes_to_a_managed_link(
    ctx: Context, tmp_path: Path, watching: Callable[..., Watching]
) -> None:
    link = tmp_path / "etc/current"
    link.symlink_to("releases/1")
    watcher = watching({"path": "/etc/current", "type": "link", "target": "releases/1"})
    watcher.prime(lambda: os.utime(link, follow_symlinks=False))

    def relink(target: str) -> None:
        """What ``ln -sfn`` and Plumb do: a new link beside, renamed over the old one."""
        (tmp_path / "etc/.new").symlink_to(target)
        os.replace(tmp_path / "etc/.new", link)

    assert watcher.changed_by(lambda: relink("releases/2"))  # a new target
    assert watcher.changed_by(lambda: os.chown(link, 65534, 65534, follow_symlinks=False))
    assert watcher.changed_by(link.unlink)
    assert watcher.changed_by(lambda: link.symlink_to("releases/3"))
    assert watcher.changed_by(lambda: relink("releases/1"))
    assert watcher.changed_by(
        lambda: converge(ctx, path="/etc/current", type="link", target="releases/4")
    )


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
