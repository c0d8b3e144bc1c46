"""What an interrupted write of the file kind leaves is private, recognised as the agent's,
and removed by the next change in that directory; nothing else is ever removed."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modules.file
from modules.base import Context
from modules.file import TEMP_PREFIX, FileKind
from tests.modules.attacking import NOBODY, owned_by_nobody, readable_by_nobody, sandbox

KIND = FileKind()
REPO = Path(__file__).resolve().parents[2]

NEW: dict[str, dict[str, Any]] = {
    "file": {"path": "/etc/secret", "content": "s3cret\n", "mode": "0644"},
    "directory": {"path": "/etc/conf.d", "type": "directory", "mode": "0755"},
    "link": {"path": "/etc/current", "type": "link", "target": "releases/1"},
}

# The file kind in a process that dies (as from kill -9) at the worst moment:
# the new entry complete, mode and all, just before it is renamed into place.
_KILLED = """
import json, os, sys
from pathlib import Path
from modules.base import Context
from modules.file import FileKind

kind = FileKind()
ctx = Context(root=Path(sys.argv[1]))
spec = kind.parse(json.loads(sys.argv[2]))
state = kind.read(ctx, spec)
os.replace = lambda *args, **kwargs: os._exit(9)
kind.apply(ctx, spec, state, kind.diff(spec, state))
"""


@pytest.fixture
def root() -> Iterator[Path]:
    """A host root that nobody may traverse down to ``/etc`` (0755), as on a real host."""
    with sandbox() as top:
        (top / "etc").mkdir()
        (top / "etc").chmod(0o755)
        (top / "etc/motd").write_text("hello\n")
        yield top


def hers(link: Path) -> None:
    """A symlink of nobody's to motd (as if she had made it where she may write)."""
    link.symlink_to("motd")
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX))


def converge(root: Path, **raw: Any) -> None:
    ctx = Context(root=root)
    spec = KIND.parse(raw)
    state = KIND.read(ctx, spec)
    KIND.apply(ctx, spec, state, KIND.diff(spec, state))
    assert KIND.diff(spec, KIND.read(ctx, spec)) == []


def killed_while_putting(root: Path, raw: dict[str, Any]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", _KILLED, str(root), json.dumps(raw)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr


def tree(path: Path) -> list[Path]:
    """``path`` and, for a directory, everything in it (never through a symlink)."""
    found = [path]
    if path.is_dir() and not path.is_symlink():
        for entry in sorted(path.iterdir()):
            found += tree(entry)
    return found


def snapshot(directory: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry under ``directory``: inode, mode, owner, and content or link target."""
    shot = {}
    for path in tree(directory)[1:]:
        st = path.lstat()
        if path.is_symlink():
            body = os.readlink(path).encode()
        elif path.is_file():
            body = path.read_bytes()
        else:
            body = b""
        shot[str(path.relative_to(directory))] = (st.st_ino, st.st_mode, st.st_uid, body)
    return shot


@pytest.mark.parametrize("kind", NEW)
def test_a_killed_write_leaves_a_private_leftover_that_the_next_change_removes(
    root: Path, kind: str
) -> None:
    etc = root / "etc"
    motd = snapshot(etc)["motd"]
    killed_while_putting(root, NEW[kind])
    [leftover] = leftovers(etc)
    # Complete, with its final mode (0644 for the file), yet nobody else can read it.
    assert readable_by_nobody([p for p in tree(etc / leftover) if not p.is_symlink()]) == []
    assert readable_by_nobody([etc / "motd"]) == [str(etc / "motd")]  # the check can say yes
    converge(root, **NEW[kind])
    assert leftovers(etc) == []
    assert snapshot(etc)["motd"] == motd


def test_a_leftover_is_removed_by_any_change_in_its_directory(root: Path) -> None:
    etc = root / "etc"
    killed_while_putting(root, NEW["file"])
    assert len(leftovers(etc)) == 1
    converge(root, path="/etc/motd", mode="0600")  # a change in place, not a new file
    assert leftovers(etc) == []
    assert not (etc / "secret").exists()


def test_what_is_not_the_agents_leftover_is_left_alone(root: Path) -> None:
    etc = root / "etc"
    # Her directory of the agent's name (she can write /etc here); an empty one
    # of root's but readable by others; ones holding what the agent never
    # leaves; a live writer's (locked); her file of 0.1.0's name; unrelated names.
    owned_by_nobody(etc / ".plumb-tmp-0000000000000000", 0o700)
    (etc / ".plumb-tmp-1111111111111111").mkdir(mode=0o755)
    crowded = etc / ".plumb-tmp-2222222222222222"
    crowded.mkdir(mode=0o700)
    (crowded / "2222222222222222").write_text("one\n")
    (crowded / "extra").write_text("two\n")
    foreign = etc / ".plumb-tmp-3333333333333333"
    foreign.mkdir(mode=0o700)
    (foreign / "keys").write_text("not a temporary\n")
    live = etc / ".plumb-tmp-4444444444444444"
    live.mkdir(mode=0o700)
    (live / "4444444444444444").write_text("being written\n")
    hers(etc / ".plumb-5555555555555555")
    (etc / ".plumb-notes").write_text("mine\n")
    (etc / ".plumb-tmp-6666").mkdir(mode=0o700)
    before = snapshot(etc)
    writer = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(writer, fcntl.LOCK_EX)
        converge(root, path="/etc/motd", content="changed\n")
    finally:
        os.close(writer)
    after = snapshot(etc)
    assert after.pop("motd") != before.pop("motd")
    assert after == before
    assert os.lstat(etc / ".plumb-5555555555555555").st_uid == NOBODY


def test_the_agents_unlocked_staging_directories_are_removed(root: Path) -> None:
    etc = root / "etc"
    full = etc / ".plumb-tmp-aaaaaaaaaaaaaaaa"
    full.mkdir(mode=0o700)
    (full / "aaaaaaaaaaaaaaaa").write_text("a complete new file\n")
    (etc / ".plumb-tmp-bbbbbbbbbbbbbbbb").mkdir(mode=0o700)  # killed after its rename
    dirs = etc / ".plumb-tmp-cccccccccccccccc"
    dirs.mkdir(mode=0o700)
    (dirs / "cccccccccccccccc").mkdir(mode=0o755)  # a new directory, never renamed
    converge(root, path="/etc/motd", content="changed\n")
    assert leftovers(etc) == []


def test_the_agents_temporaries_from_plumb_0_1_0_are_removed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its temporaries sat in the directory itself, some full copies at their final mode."""
    etc = root / "etc"
    (etc / ".plumb-0123456789abcdef").write_text("a full copy\n")
    (etc / ".plumb-0123456789abcdef").chmod(0o644)
    (etc / ".plumb-1123456789abcdef").mkdir()
    (etc / ".plumb-2123456789abcdef").symlink_to("motd")
    hers(etc / ".plumb-3123456789abcdef")  # not the agent's to remove
    converge(root, path="/etc/motd", content="one\n")
    # Made since this process started: perhaps an older agent still writing. Kept.
    assert len(leftovers(etc)) == 4
    monkeypatch.setattr(modules.file, "_STARTED", time.time() + 60)
    converge(root, path="/etc/motd", content="two\n")
    assert leftovers(etc) == [".plumb-3123456789abcdef"]
