"""A renewed identity is moved in whole, even when a crash interrupts the move.

Real files in a temp state dir; each crash point is the state a crash there
leaves behind, and the next start (``finish_identity``) must end with a key
and a certificate that belong together.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.state import StateDir

OLD = (b"old key", b"old cert")
NEW = (b"new key", b"new cert")


def state_with_old(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    state.ensure()
    state.key.write_bytes(OLD[0])
    state.cert.write_bytes(OLD[1])
    return state


def pair(state: StateDir) -> tuple[bytes, bytes]:
    return state.key.read_bytes(), state.cert.read_bytes()


def test_replace_identity_moves_both_in_and_leaves_nothing_staged(tmp_path: Path) -> None:
    state = state_with_old(tmp_path)
    state.replace_identity(*NEW)
    assert pair(state) == NEW
    assert not state.next_key.exists() and not state.next_cert.exists()
    assert oct(state.key.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("staged", "moved_key", "expected"),
    [
        # Crashed while staging the key: nothing was decided, the old pair stands.
        ({"key": NEW[0]}, False, OLD),
        # Staged whole, crashed before moving: the new pair goes in.
        ({"key": NEW[0], "cert": NEW[1]}, False, NEW),
        # The key moved in, crashed before the certificate: the certificate follows.
        ({"cert": NEW[1]}, True, NEW),
    ],
)
def test_a_move_a_crash_interrupted_is_finished_at_the_next_start(
    tmp_path: Path, staged: dict[str, bytes], moved_key: bool, expected: tuple[bytes, bytes]
) -> None:
    state = state_with_old(tmp_path)
    if "key" in staged:
        state.next_key.write_bytes(staged["key"])
    if "cert" in staged:
        state.next_cert.write_bytes(staged["cert"])
    if moved_key:
        state.key.write_bytes(NEW[0])
    state.finish_identity()
    assert pair(state) == expected
    assert not state.next_key.exists() and not state.next_cert.exists()


def test_something_else_where_a_staged_file_would_be_is_never_moved_over_the_identity(
    tmp_path: Path,
) -> None:
    state = state_with_old(tmp_path)
    state.next_cert.mkdir()
    state.finish_identity()
    assert pair(state) == OLD
    assert state.next_cert.is_dir()
