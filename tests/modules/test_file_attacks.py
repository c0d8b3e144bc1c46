"""The file kind against an unprivileged user on the managed node, on the real kernel.

Each attack is the one a security review ran on real hosts: ``nobody``
(a real process, uid and gid 65534) swaps a directory of hers on a managed
path for a symlink to something of root's, planted once or racing the agent
with renameat2(RENAME_EXCHANGE), while the test runs the kind's read → diff
→ apply against a sandbox root (``Context(root=...)``). The victim, made by
the test outside the directory she controls, must never change; when the
agent loses the race the resource fails with the message that names the
symlink. Then the setuid cases: a mode is only set when the spec manages it.

Every symlink target points inside the test's own sandbox (see
tests/modules/attacking.py), so code that follows them damages nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modules.base import Change, Context
from modules.errors import ApplyError, ModuleError, ReadError
from modules.file import TEMP_PREFIX, FileKind
from tests.modules.attacking import NOBODY, owned_by_nobody, plant, sandbox, swapping

KIND = FileKind()
WHY = "Plumb never follows a symlink in a parent directory that a non-root user could have planted"
ROOTS_KEY = b"ssh-ed25519 AAAA root@admin\n"
# Enough of both outcomes to know the race was run (each takes about a millisecond).
WANTED_OUTCOMES = 50
RACE_DEADLINE_S = 60.0


@dataclasses.dataclass(frozen=True)
class Host:
    """A sandbox host root with a user alice (really nobody) and things of root's to attack."""

    top: Path  # the sandbox; the host root and "outside" are in it
    root: Path  # Context.root
    outside: Path  # beside the root: only reachable by escaping it

    @property
    def ctx(self) -> Context:
        return Context(root=self.root)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


@pytest.fixture
def host() -> Iterator[Host]:
    with sandbox() as top:
        root = top / "host"
        (root / "root/.ssh").mkdir(parents=True)
        (root / "root").chmod(0o700)
        (root / "root/.ssh").chmod(0o700)
        keys = root / "root/.ssh/authorized_keys"
        keys.write_bytes(ROOTS_KEY)
        keys.chmod(0o600)
        (root / "var/lib/app/db").mkdir(parents=True)
        (root / "var/lib/app/db/data").write_text("root's data\n")
        (root / "usr/local/bin").mkdir(parents=True)
        outside = top / "outside"
        outside.mkdir()
        (outside / "app.conf").write_text("outside the root\n")
        (root / "home").mkdir()
        alice = owned_by_nobody(root / "home/alice")
        for name in (".ssh", ".cache", ".config"):
            owned_by_nobody(alice / name, 0o700)
        yield Host(top, root, outside)


def snapshot(directory: Path) -> dict[str, Any]:
    """Everything about a tree that an attack could change: names, types, bytes, modes, owners."""
    seen: dict[str, Any] = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        st = os.lstat(path)
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        digest = hashlib.sha256(content).hexdigest() if content is not None else None
        seen[str(path.relative_to(directory))] = (st.st_mode, st.st_uid, st.st_ino, digest)
    return seen


def unsafe(verbs: str, path: str, directory: str, target: str) -> re.Pattern[str]:
    """The whole message of a resource failed on alice's symlink."""
    return re.compile(
        rf"cannot ({verbs}) {re.escape(path)}: parent {re.escape(directory)} is a symlink "
        rf"\(to {re.escape(target)}\) owned by nobody \(uid 65534\); {WHY}"
    )


def race(
    host: Host,
    raw: Callable[[int], dict[str, Any]],
    victim: Path,
    attacker: subprocess.Popen[str],
) -> tuple[int, list[str]]:
    """Enforce ``raw(i)`` again and again while she swaps; until both sides won a few times.

    Returns how often an apply went through (into her real directory) and the
    messages of the runs that failed. Stops early if ``victim`` changed.
    """
    applied, failures = 0, []
    deadline = time.monotonic() + RACE_DEADLINE_S
    before = snapshot(victim)
    i = 0
    while applied < WANTED_OUTCOMES or len(failures) < WANTED_OUTCOMES:
        assert time.monotonic() < deadline, f"{applied} applied, failures: {failures[:3]}"
        if snapshot(victim) != before:
            break  # the caller's own check says what changed
        assert attacker.poll() is None, f"the attacker stopped: {attacker.communicate()}"
        spec = KIND.parse(raw(i))
        i += 1
        try:
            state = KIND.read(host.ctx, spec)
            changes = KIND.diff(spec, state)
            if changes:
                KIND.apply(host.ctx, spec, state, changes)
                applied += 1
        except ModuleError as exc:
            failures.append(str(exc))
    return applied, failures


# --- races -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Overwrite:
    """She points a parent of a file resource at a directory holding a victim of root's."""

    directory: str  # hers, under the host root
    target: Callable[[Host], str]  # what her symlink points to
    victim: Callable[[Host], Path]  # what must not change (a file of root's)


OVERWRITES = {
    # ~/.ssh -> /root/.ssh: root's authorized_keys would get her key.
    "ssh": Overwrite("/home/alice/.ssh", lambda h: "../../root/.ssh", lambda h: h.root / "root"),
    # Out of --root: an absolute target (the host's own path of a directory beside the root).
    "escape-absolute": Overwrite(
        "/home/alice/.config", lambda h: str(h.outside), lambda h: h.outside
    ),
    # Out of --root with '..': home/alice/../../.. is the sandbox, above the root.
    "escape-dotdot": Overwrite(
        "/home/alice/.config", lambda h: "../../../outside", lambda h: h.outside
    ),
}
VICTIM_NAME = {"ssh": "authorized_keys", "escape-absolute": "app.conf", "escape-dotdot": "app.conf"}


@pytest.mark.parametrize("name", OVERWRITES)
def test_racing_a_swapped_parent_never_writes_through_it(host: Host, name: str) -> None:
    attack = OVERWRITES[name]
    path = f"{attack.directory}/{VICTIM_NAME[name]}"
    victim = attack.victim(host)
    before = snapshot(victim)
    target = attack.target(host)
    with swapping(host.path(attack.directory), target) as attacker:
        applied, failures = race(
            host,
            lambda i: {"path": path, "content": f"her key {i}\n", "mode": "0644"},
            victim,
            attacker,
        )
    assert snapshot(victim) == before
    expected = unsafe("read|create|write", path, attack.directory, target)
    assert [f for f in failures if not expected.fullmatch(f)] == []
    assert applied >= WANTED_OUTCOMES  # her own directory did get the file


def test_racing_a_swapped_parent_never_removes_through_it(host: Host) -> None:
    """~/.cache -> /var/lib: ``state: absent, force: true`` of ~/.cache/app must not
    remove /var/lib/app."""
    victim = host.root / "var/lib"
    before = snapshot(victim)
    with swapping(host.path("/home/alice/.cache"), "../../var/lib", refill="app") as attacker:
        applied, failures = race(
            host,
            lambda i: {"path": "/home/alice/.cache/app", "state": "absent", "force": True},
            victim,
            attacker,
        )
    assert snapshot(victim) == before
    expected = unsafe(
        "read|remove", "/home/alice/.cache/app", "/home/alice/.cache", "../../var/lib"
    )
    assert [f for f in failures if not expected.fullmatch(f)] == []
    assert applied >= WANTED_OUTCOMES  # her own app directory was removed, again and again


# --- the same attacks, planted once (the exact messages) ------------------------------


def test_a_planted_parent_symlink_fails_the_read(host: Host) -> None:
    (host.root / "home/alice/.ssh").rmdir()
    plant(host.path("/home/alice/.ssh"), "../../root/.ssh")
    spec = KIND.parse({"path": "/home/alice/.ssh/authorized_keys", "content": "her key\n"})
    with pytest.raises(ReadError) as caught:
        KIND.read(host.ctx, spec)
    assert str(caught.value) == (
        "cannot read /home/alice/.ssh/authorized_keys: parent /home/alice/.ssh is a symlink "
        f"(to ../../root/.ssh) owned by nobody (uid 65534); {WHY}"
    )
    assert (host.root / "root/.ssh/authorized_keys").read_bytes() == ROOTS_KEY


def swap_for_symlink(host: Host, directory: str, target: str) -> None:
    """She moves her directory aside and plants a symlink in its place."""
    os.rename(host.path(directory), host.path(directory + ".away"))
    plant(host.path(directory), target)


def test_a_parent_swapped_after_read_fails_the_apply(host: Host) -> None:
    victim = host.root / "root/.ssh"
    before = snapshot(victim)
    spec = KIND.parse({"path": "/home/alice/.ssh/authorized_keys", "content": "her key\n"})
    state = KIND.read(host.ctx, spec)  # her real, empty .ssh
    swap_for_symlink(host, "/home/alice/.ssh", "../../root/.ssh")
    with pytest.raises(ApplyError) as caught:
        KIND.apply(host.ctx, spec, state, KIND.diff(spec, state))
    assert str(caught.value) == (
        "cannot create /home/alice/.ssh/authorized_keys: parent /home/alice/.ssh is a symlink "
        f"(to ../../root/.ssh) owned by nobody (uid 65534); {WHY}"
    )
    assert snapshot(victim) == before


def test_a_parent_swapped_after_read_fails_the_removal(host: Host) -> None:
    owned_by_nobody(host.path("/home/alice/.cache/app"))
    victim = host.root / "var/lib"
    before = snapshot(victim)
    spec = KIND.parse({"path": "/home/alice/.cache/app", "state": "absent", "force": True})
    state = KIND.read(host.ctx, spec)
    assert KIND.diff(spec, state) == [Change("state", "directory", "absent")]
    swap_for_symlink(host, "/home/alice/.cache", "../../var/lib")
    with pytest.raises(ApplyError) as caught:
        KIND.apply(host.ctx, spec, state, KIND.diff(spec, state))
    assert str(caught.value) == (
        "cannot remove /home/alice/.cache/app: parent /home/alice/.cache is a symlink "
        f"(to ../../var/lib) owned by nobody (uid 65534); {WHY}"
    )
    assert snapshot(victim) == before


def test_a_parent_swapped_after_read_fails_a_change_in_place(host: Host) -> None:
    """Only owner and mode managed: changed through a descriptor, never by path."""
    mine = host.path("/home/alice/.ssh/authorized_keys")
    mine.write_text("her key\n")
    os.chown(mine, NOBODY, NOBODY)
    victim = host.root / "root/.ssh"
    before = snapshot(victim)
    spec = KIND.parse({"path": "/home/alice/.ssh/authorized_keys", "owner": "root", "mode": "0644"})
    state = KIND.read(host.ctx, spec)
    swap_for_symlink(host, "/home/alice/.ssh", "../../root/.ssh")
    with pytest.raises(ApplyError, match=r"^cannot write .*is a symlink \(to \.\./\.\./root/\.ssh"):
        KIND.apply(host.ctx, spec, state, KIND.diff(spec, state))
    assert snapshot(victim) == before


# --- trusted symlinks: merged /usr, and in-root resolution ------------------------------


@pytest.fixture
def merged_usr(host: Host) -> Host:
    """Debian 12's merged /usr in the sandbox: /lib -> usr/lib and /bin -> usr/bin, root's."""
    (host.root / "usr/lib/systemd/system").mkdir(parents=True)
    (host.root / "usr/bin").mkdir(parents=True)
    (host.root / "lib").symlink_to("usr/lib")
    (host.root / "bin").symlink_to("usr/bin")
    assert (os.lstat(host.root / "lib").st_uid, os.stat(host.root).st_mode & 0o022) == (0, 0)
    return host


def converge(ctx: Context, **raw: Any) -> list[Change]:
    """One enforce run; then a second finds nothing to do."""
    spec = KIND.parse(raw)
    state = KIND.read(ctx, spec)
    changes = KIND.diff(spec, state)
    if changes:
        KIND.apply(ctx, spec, state, changes)
    assert KIND.diff(spec, KIND.read(ctx, spec)) == []
    return changes


def test_merged_usr_symlinks_still_work(merged_usr: Host) -> None:
    ctx = merged_usr.ctx
    unit = merged_usr.root / "usr/lib/systemd/system/web.service"
    assert converge(ctx, path="/lib/systemd/system/web.service", content="[Unit]\n")
    assert unit.read_text() == "[Unit]\n"
    assert converge(ctx, path="/bin/tool", content="#!/bin/sh\n", mode="0755")
    assert stat.S_IMODE((merged_usr.root / "usr/bin/tool").stat().st_mode) == 0o755
    converge(ctx, path="/lib/systemd/system/web.service", state="absent")
    assert not unit.exists()
    assert (merged_usr.root / "lib").is_symlink()  # the link itself is never touched
    assert os.listdir(merged_usr.root / "usr/lib/systemd/system") == []  # no temporaries left


def test_a_trusted_absolute_symlink_stays_in_the_root(host: Host) -> None:
    """root's /opt -> <the host's own path of 'outside'> means that path under --root."""
    before = snapshot(host.outside)
    inside = host.root / str(host.outside).lstrip("/")
    inside.mkdir(parents=True)
    (host.root / "opt").symlink_to(host.outside)
    converge(host.ctx, path="/opt/app.conf", content="in the root\n")
    assert (inside / "app.conf").read_text() == "in the root\n"
    assert snapshot(host.outside) == before


def test_a_trusted_dotdot_symlink_stays_in_the_root(host: Host) -> None:
    """root's /etc/up -> ../../outside: '..' stops at the root, so it is the root's /outside."""
    before = snapshot(host.outside)
    (host.root / "etc").mkdir()
    (host.root / "outside").mkdir()
    (host.root / "etc/up").symlink_to("../../outside")
    converge(host.ctx, path="/etc/up/app.conf", content="in the root\n")
    assert (host.root / "outside/app.conf").read_text() == "in the root\n"
    assert snapshot(host.outside) == before


# --- setuid and setgid: a mode is only set when it is managed ----------------------------


def her_program(host: Host, mode: int, name: str = "tool") -> Path:
    """A program of nobody's, with setuid/setgid bits she may set on her own file."""
    program = host.root / "usr/local/bin" / name
    program.write_text("#!/bin/sh\nid\n")
    os.chown(program, NOBODY, NOBODY)
    program.chmod(mode)  # after the chown, which would clear the bits
    assert stat.S_IMODE(program.stat().st_mode) == mode
    return program


def test_managing_only_the_owner_never_makes_a_setuid_root_program(host: Host) -> None:
    program = her_program(host, 0o4755)
    inode = program.stat().st_ino
    changes = converge(host.ctx, path="/usr/local/bin/tool", owner="root")
    assert changes == [Change("owner", "nobody(65534)", "root(0)")]
    st = program.stat()
    assert (st.st_uid, st.st_ino) == (0, inode)  # changed in place
    assert stat.S_IMODE(st.st_mode) == 0o755  # the kernel cleared setuid; nothing set it back


def test_managing_only_the_group_never_makes_a_setgid_root_program(host: Host) -> None:
    program = her_program(host, 0o2755)
    converge(host.ctx, path="/usr/local/bin/tool", group="root")
    st = program.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0o755)


@pytest.mark.parametrize(
    ("mode", "kept"),
    [(0o4755, 0o755), (0o6750, 0o750), (0o1644, 0o644)],
    ids=["setuid", "setuid-setgid", "sticky"],
)
def test_new_content_never_carries_setuid_setgid_or_sticky_over(
    host: Host, mode: int, kept: int
) -> None:
    program = her_program(host, mode)
    converge(host.ctx, path="/usr/local/bin/tool", content="#!/bin/sh\nid -u\n")
    st = program.stat()
    assert program.read_text() == "#!/bin/sh\nid -u\n"
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, kept)


def test_new_content_and_owner_never_make_a_setuid_root_program(host: Host) -> None:
    program = her_program(host, 0o4755)
    converge(host.ctx, path="/usr/local/bin/tool", content="#!/bin/sh\n", owner="root")
    st = program.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)


def test_a_managed_mode_still_grants_setuid(host: Host) -> None:
    program = her_program(host, 0o755)
    converge(host.ctx, path="/usr/local/bin/tool", owner="root", mode="4755")
    st = program.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o4755)


def test_an_unmanaged_mode_is_never_set_on_a_change_in_place(host: Host) -> None:
    conf = host.root / "usr/local/bin/conf"
    conf.write_text("x")
    conf.chmod(0o640)
    ctime = conf.stat().st_ctime_ns
    converge(host.ctx, path="/usr/local/bin/conf", group="nogroup")
    st = conf.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o640)
    assert st.st_ctime_ns >= ctime


def test_temporaries_are_private_and_never_reuse_a_planted_name(host: Host) -> None:
    """She cannot read new content before its mode is set, nor get it written through her link."""
    alice = host.path("/home/alice/.ssh")
    for i in range(5):  # names she might guess: all hers, all left alone
        plant(alice / f"{TEMP_PREFIX}{i}", "../../../root/.ssh/authorized_keys")
    converge(host.ctx, path="/home/alice/.ssh/authorized_keys", content="secret\n", mode="0600")
    st = os.stat(alice / "authorized_keys")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert (host.root / "root/.ssh/authorized_keys").read_bytes() == ROOTS_KEY
    assert sorted(n for n in os.listdir(alice) if n.startswith(TEMP_PREFIX)) == [
        f"{TEMP_PREFIX}{i}" for i in range(5)
    ]
