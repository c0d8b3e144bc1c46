"""modules.safepath: the trust rule on its own, then the walk on the real filesystem.

The walk tests use pytest's tmp_path as the context root: root-owned and 0700,
so a symlink root makes in it is one the rule trusts, and ownership or modes
are changed per test to make one it does not.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from modules.safepath import MAX_SYMLINKS, UnsafePath, distrust, parent_of

NOBODY = 65534
WHY = "Plumb never follows a symlink in a parent directory that a non-root user could have planted"


def fake_stat(mode: int, uid: int) -> os.stat_result:
    # (st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, st_atime, st_mtime, st_ctime)
    return os.stat_result((mode, 1, 1, 1, uid, uid, 0, 0, 0, 0))


LINK = stat.S_IFLNK | 0o777
DIRECTORY = stat.S_IFDIR

TRUST_CASES = [
    ("root's link in a root-only directory", LINK, 0, DIRECTORY | 0o755, 0, None),
    ("root-only directory without search for others", LINK, 0, DIRECTORY | 0o700, 0, None),
    ("setgid directory not group-writable", LINK, 0, DIRECTORY | 0o2755, 0, None),
    ("link of a uid without a name", LINK, 4000123, DIRECTORY | 0o755, 0, "owned by uid 4000123"),
    ("link of nobody", LINK, NOBODY, DIRECTORY | 0o755, 0, "owned by nobody (uid 65534)"),
    (
        "root's link in a user's directory",
        LINK,
        0,
        DIRECTORY | 0o755,
        NOBODY,
        "in /d, a directory owned by nobody (uid 65534)",
    ),
    (
        "root's link in a group-writable directory",
        LINK,
        0,
        DIRECTORY | 0o775,
        0,
        "in /d, a directory writable by its group (mode 0775)",
    ),
    (
        "root's link in a sticky world-writable directory (/tmp)",
        LINK,
        0,
        DIRECTORY | 0o1777,
        0,
        "in /d, a directory writable by its group and others (mode 1777)",
    ),
    (
        "root's link in an other-writable directory",
        LINK,
        0,
        DIRECTORY | 0o757,
        0,
        "in /d, a directory writable by others (mode 0757)",
    ),
]


@pytest.mark.parametrize(
    ("link_mode", "link_uid", "dir_mode", "dir_uid", "expected"),
    [case[1:] for case in TRUST_CASES],
    ids=[case[0] for case in TRUST_CASES],
)
def test_trust_rule(
    link_mode: int, link_uid: int, dir_mode: int, dir_uid: int, expected: str | None
) -> None:
    assert distrust(fake_stat(link_mode, link_uid), fake_stat(dir_mode, dir_uid), "/d") == expected


# --- the walk, on the real filesystem ------------------------------------------------


def resolve(root: Path, path: str) -> tuple[str, str, Path]:
    """Where ``path``'s parent resolved to (as text), its name, and the directory it is."""
    with parent_of(root, path) as parent:
        st = os.fstat(parent.fd)
        found = {(d.stat().st_dev, d.stat().st_ino): d for d in _directories(root.parent)}
        return parent.where, parent.name, found[(st.st_dev, st.st_ino)]


def _directories(top: Path) -> list[Path]:
    return [top, *(p for p in top.rglob("*") if p.is_dir() and not p.is_symlink())]


def test_plain_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/app").mkdir(parents=True)
    assert resolve(root, "/etc/app/app.conf") == ("/etc/app", "app.conf", root / "etc/app")
    assert resolve(root, "/top-level") == ("/", "top-level", root)


def test_merged_usr_symlinks_are_followed(tmp_path: Path) -> None:
    """Debian's /lib -> usr/lib: root's, in the root-only /: trusted."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "bin").symlink_to("usr/bin")
    assert resolve(root, "/lib/systemd/system/web.service") == (
        "/usr/lib/systemd/system",
        "web.service",
        root / "usr/lib/systemd/system",
    )
    assert resolve(root, "/bin/tool")[2] == root / "usr/bin"


def test_absolute_target_resolves_in_the_root(tmp_path: Path) -> None:
    """RESOLVE_IN_ROOT: /opt -> /srv/opt is the root's /srv/opt, not the host's."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    inside = root / str(outside).lstrip("/")
    inside.mkdir(parents=True)
    (root / "opt").symlink_to(outside)  # the very text of a real directory outside
    assert resolve(root, "/opt/x") == (str(outside), "x", inside)


def test_dotdot_never_climbs_above_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "srv").mkdir()
    (root / "etc/up").symlink_to("../../../..")
    (root / "etc/sibling").symlink_to("../srv")
    (root / "etc/round").symlink_to("../etc/../../../srv")
    assert resolve(root, "/etc/up/x") == ("/", "x", root)
    assert resolve(root, "/etc/sibling/x") == ("/srv", "x", root / "srv")
    assert resolve(root, "/etc/round/x") == ("/srv", "x", root / "srv")


def test_dotdot_goes_back_the_way_it_came(tmp_path: Path) -> None:
    """``..`` after a symlink is the parent of where the link led, as in the kernel."""
    root = tmp_path / "root"
    (root / "usr/lib/app").mkdir(parents=True)
    (root / "usr/share").mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/up").symlink_to("../share")
    assert resolve(root, "/lib/up/x")[0] == "/usr/share"
    (root / "usr/lib/app/back").symlink_to("/lib/app/..")
    assert resolve(root, "/lib/app/back/x")[0] == "/usr/lib"


def test_a_chain_of_symlinks_is_followed_up_to_the_kernels_limit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/end").mkdir(parents=True)
    for i in range(MAX_SYMLINKS + 1):
        (root / f"etc/l{i}").symlink_to(f"l{i + 1}" if i < MAX_SYMLINKS else "end")
    # l1 -> ... -> l40 -> end is 40 symlinks; from l0 it is 41.
    assert resolve(root, "/etc/l1/x")[2] == root / "etc/end"
    with pytest.raises(OSError, match="Too many levels of symbolic links") as caught:
        resolve(root, "/etc/l0/x")
    assert caught.value.errno == errno.ELOOP


def test_a_symlink_loop_ends(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/a").symlink_to("b")
    (root / "etc/b").symlink_to("/etc/a")
    with pytest.raises(OSError, match=r"resolving /etc/a \(more than 40\)") as caught:
        resolve(root, "/etc/a/x")
    assert caught.value.errno == errno.ELOOP


def test_a_non_directory_on_the_way(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("a file")
    os.mkfifo(root / "etc/pipe")
    (root / "etc/to-motd").symlink_to("motd")
    with pytest.raises(NotADirectoryError, match="parent /etc/motd is a regular file"):
        resolve(root, "/etc/motd/x")
    with pytest.raises(NotADirectoryError, match="parent /etc/pipe is a FIFO"):
        resolve(root, "/etc/pipe/x")
    with pytest.raises(NotADirectoryError, match="parent /etc/motd is a regular file"):
        resolve(root, "/etc/to-motd/x")


def test_missing_components(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/dangling").symlink_to("nowhere")
    for path in ("/srv/app/x", "/etc/dangling/x"):
        with pytest.raises(FileNotFoundError):
            resolve(root, path)
    with pytest.raises(FileNotFoundError):
        resolve(tmp_path / "no-root", "/etc/x")


def test_a_link_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "root/.ssh").mkdir(parents=True)
    (root / "home").mkdir()
    (root / "home/.ssh").symlink_to("../root/.ssh")
    os.chown(root / "home/.ssh", NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(UnsafePath) as caught:
        resolve(root, "/home/.ssh/authorized_keys")
    assert caught.value.strerror == (
        f"parent /home/.ssh is a symlink (to ../root/.ssh) owned by nobody (uid 65534); {WHY}"
    )
    assert caught.value.errno == errno.ELOOP


@pytest.mark.parametrize(
    ("owner", "mode", "reason"),
    [
        (NOBODY, 0o755, "in /home/alice, a directory owned by nobody (uid 65534)"),
        (0, 0o1777, "in /home/alice, a directory writable by its group and others (mode 1777)"),
        (0, 0o775, "in /home/alice, a directory writable by its group (mode 0775)"),
    ],
)
def test_roots_link_in_a_directory_others_can_write_is_refused(
    tmp_path: Path, owner: int, mode: int, reason: str
) -> None:
    """Anyone who can write the directory could have moved root's link there, or swap it."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    alice = root / "home/alice"
    alice.mkdir(parents=True)
    (alice / "conf").symlink_to("/etc")  # made by root: root's
    os.chown(alice, owner, owner)
    alice.chmod(mode)
    with pytest.raises(UnsafePath) as caught:
        resolve(root, "/home/alice/conf/x")
    assert (
        caught.value.strerror == f"parent /home/alice/conf is a symlink (to /etc) {reason}; {WHY}"
    )


def test_a_trusted_links_target_is_walked_by_the_same_rule(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "home/alice").mkdir(parents=True)
    (root / "secret").mkdir()
    (root / "home/alice/lib").symlink_to("/secret")
    os.chown(root / "home/alice/lib", NOBODY, NOBODY, follow_symlinks=False)
    (root / "lib").symlink_to("home/alice/lib")  # root's, but leads through hers
    with pytest.raises(UnsafePath, match="parent /home/alice/lib is a symlink"):
        resolve(root, "/lib/x")


def test_unprintable_targets_are_quoted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/odd").symlink_to("a\nb")
    os.chown(root / "etc/odd", NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(UnsafePath, match=r'\(to "a\\nb"\)'):
        resolve(root, "/etc/odd/x")


def test_the_root_itself_is_configuration(tmp_path: Path) -> None:
    """--root may be given through a symlink: it is the operator's, not a managed path."""
    (tmp_path / "real/etc").mkdir(parents=True)
    (tmp_path / "alias").symlink_to("real")
    assert resolve(tmp_path / "alias", "/etc/x")[2] == tmp_path / "real/etc"


@pytest.mark.parametrize("path", ["etc/x", "/etc/../x", "/etc/", "/etc/.."])
def test_only_absolute_paths_without_dotdot(tmp_path: Path, path: str) -> None:
    with (
        pytest.raises(ValueError, match=r"not an absolute path without '\.\.'"),
        parent_of(tmp_path, path),
    ):
        pass


def test_no_descriptor_is_left_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "loop").symlink_to("loop")
    (root / "theirs").symlink_to("usr")
    os.chown(root / "theirs", NOBODY, NOBODY, follow_symlinks=False)
    before = len(os.listdir("/proc/self/fd"))
    for path in ("/lib/x", "/loop/x", "/theirs/x", "/missing/x", "/usr/lib/x"):
        try:
            with parent_of(root, path):
                pass
        except OSError:
            pass
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_component_that_keeps_changing_is_refused_not_followed(tmp_path: Path) -> None:
    """A walk that loses the race to a swapper again and again gives up safely, and says so."""
    import modules.safepath as safepath

    root = tmp_path / "root"
    (root / "home/alice/.ssh").mkdir(parents=True)
    walk = safepath._Walk(os.open(root, os.O_PATH | os.O_DIRECTORY))
    try:
        for _ in range(safepath.MAX_RACES):
            assert walk._raced("/home/alice/.ssh", ".ssh") == ".ssh"
        with pytest.raises(UnsafePath, match="keeps changing between a symlink and a directory"):
            walk._raced("/home/alice/.ssh", ".ssh")
    finally:
        walk.close()
