"""The agent's state directory (default /var/lib/plumb, mode 0700).

node.key node.crt ca.crt   identity (0600); the key is made here and never leaves
node.next.key node.next.crt  a renewed identity being moved in (agent/renewal.py); finished
                           or dropped at the next start (StateDir.finish_identity)
enrollment.json            node name, server address, labels
catalog.pb                 the last verified SignedCatalog, re-verified on every load
spool.db                   reports not yet acknowledged by the server
losses.json                state the agent found damaged and set aside (agent/losses.py):
                           sent with every hello until the server has recorded it
catalog.pb.rejected-<UTC>  a cached catalog that did not parse or verify, kept for inspection
spool.db.damaged-<UTC>     a spool that was not a sound database (with its -wal, -shm),
                           kept for inspection; a fresh spool.db took its place
last_run.json              summary of the last run, for `plumb-agent status`
clock.json                 this host's clock minus the server's, seen at the last welcome
flapping.json              drift repairs per resource, and holds (agent/flapping.py)
converged.json             resource id -> spec hash it last converged to (drift vs. change)
reverted.json              risky resources reverted at a revision: held until a new one
run.lock                   one run at a time across daemon and `run --once`
restart-requested          left by the agent's own package upgrade: restart after the run
audit-lock.json            the audit lock (`plumb-agent audit-lock on`): while it is here,
                           nothing is enforced on this host (agent/auditlock.py)

A state dir that takes no writes (its file system full, over quota,
read-only, failing) must not stop the agent: repairs go on and are reported.
Whatever cannot be written waits in memory (the spool's reports, a catalog
just received, a loss) and the bookkeeping files are simply not updated
(:meth:`StateDir.keep`); the node holds the condition
``state_dir_unwritable`` (agent/conditions.py), which the server shows. The
daemon probes the directory every few seconds meanwhile, and once it takes a
write again writes what waited and clears the condition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from agent.conditions import STATE_DIR_UNWRITABLE, Conditions
from agent.errors import NotEnrolled

log = logging.getLogger("plumb.agent")

#: Set-aside copies of one file kept for inspection; older ones are deleted, so
#: a file that keeps being damaged cannot fill the disk.
KEEP_SET_ASIDE = 5
#: errno values meaning the storage takes no writes now (full, over quota,
#: read-only, failing), not that the agent asked for something wrong.
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


@dataclasses.dataclass(frozen=True)
class Enrollment:
    node: str
    server: str  # host:port of the Agent service (mutual TLS)
    labels: dict[str, str]
    enrolled_at: float


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        #: What is wrong with the state dir now (this process's view, in memory).
        self.conditions = Conditions()

    @property
    def key(self) -> Path:
        return self.path / "node.key"

    @property
    def cert(self) -> Path:
        return self.path / "node.crt"

    @property
    def next_key(self) -> Path:
        return self.path / "node.next.key"

    @property
    def next_cert(self) -> Path:
        return self.path / "node.next.crt"

    def replace_identity(self, key_pem: bytes, cert_pem: bytes) -> None:
        """Make ``key_pem`` and ``cert_pem`` the node's key and certificate, even across a crash.

        Two files cannot be renamed at once, and a certificate beside another
        key's would lock the node out. So the pair is staged whole (the
        certificate last) and then moved in, key first; a crash in between is
        finished by :meth:`finish_identity` at the next start.
        """
        write_atomic(self.next_key, key_pem)
        write_atomic(self.next_cert, cert_pem)
        self.finish_identity()

    def finish_identity(self) -> None:
        """Finish moving a staged identity in, or drop one that was never staged whole."""
        # Files only: anything else there was not staged by this agent, and is
        # not moved over its identity.
        if self.next_cert.is_file():
            if self.next_key.is_file():
                os.replace(self.next_key, self.key)
            os.replace(self.next_cert, self.cert)
            _sync(self.path)
        elif self.next_key.is_file():
            self.next_key.unlink()

    @property
    def ca(self) -> Path:
        return self.path / "ca.crt"

    @property
    def catalog(self) -> Path:
        return self.path / "catalog.pb"

    @property
    def spool(self) -> Path:
        return self.path / "spool.db"

    @property
    def restart_requested(self) -> Path:
        return self.path / "restart-requested"

    @property
    def last_run(self) -> Path:
        return self.path / "last_run.json"

    @property
    def converged(self) -> Path:
        return self.path / "converged.json"

    @property
    def clock(self) -> Path:
        return self.path / "clock.json"

    @property
    def lock(self) -> Path:
        return self.path / "run.lock"

    @property
    def losses(self) -> Path:
        return self.path / "losses.json"

    @property
    def audit_lock(self) -> Path:
        return self.path / "audit-lock.json"

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def enrollment(self) -> Enrollment:
        try:
            raw = json.loads((self.path / "enrollment.json").read_text())
        except FileNotFoundError:
            raise NotEnrolled(
                f"this node is not enrolled (no {self.path}/enrollment.json): "
                "run 'plumb-agent enroll --server HOST:PORT --token-file FILE'"
            ) from None
        return Enrollment(**raw)

    def save_enrollment(self, enrollment: Enrollment) -> None:
        write_atomic(
            self.path / "enrollment.json",
            json.dumps(dataclasses.asdict(enrollment), indent=2).encode(),
        )

    def keep(self, path: Path, data: bytes) -> bool:
        """:func:`write_atomic` for what the agent can do without for a while; whether written.

        A state dir that takes no writes makes this a condition, not a crash.
        """
        try:
            write_atomic(path, data)
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            self.unwritable(f"{path.name}: {exc.strerror}")
            return False
        return True

    def unwritable(self, why: str) -> None:
        """A write into the state dir failed for ``why``: the node holds the condition."""
        # SQLite says "disk I/O error" when a full disk keeps it from making its -shm.
        detail = (
            f"state dir {self.path} cannot be written ({why}{_space(self.path)}); "
            "reports wait in memory"
        )
        if self.conditions.hold(STATE_DIR_UNWRITABLE, detail):
            log.error("%s until it can be; repairs go on", detail)

    @property
    def is_unwritable(self) -> bool:
        return any(c.name == STATE_DIR_UNWRITABLE for c in self.conditions.current())

    def takes_writes(self) -> bool:
        """Whether a page written into the state dir (and fsynced, then removed) goes through."""
        probe = self.path / ".probe"
        try:
            write_atomic(probe, bytes(4096))
            probe.unlink()
        except OSError:
            return False
        return True

    def writable(self) -> None:
        """What waited in memory is written: the condition no longer holds."""
        if self.conditions.clear(STATE_DIR_UNWRITABLE):
            log.info("state dir %s can be written again; what waited in memory is in it", self.path)

    def read_json(self, path: Path) -> Any:
        """The JSON in ``path``; None if it is missing or damaged (not UTF-8, not JSON)."""
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # JSONDecodeError, UnicodeDecodeError
            return None


def _space(path: Path) -> str:
    """``; its file system is full``, ``; 12 KiB free``: what the cause may be."""
    try:
        st = os.statvfs(path)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    if free < 64 * 1024:
        return f"; its file system is full ({free} bytes free)"
    return f"; {free // 1024} KiB free"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write via a temp file and rename, so a crash leaves the old or the new file, never half.

    Neither name is followed if it is a symlink: the rename replaces a link
    at ``path`` itself, and a link in place of the temporary fails the open
    (ELOOP) rather than have the agent, as root, write wherever it points.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A half-written temporary must not keep the space a full disk lacks.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync(path.parent)


def _sync(directory: Path) -> None:
    """Make the renames in ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_aside(path: Path, label: str, sidecars: tuple[str, ...] = ()) -> Path:
    """Rename ``path`` to ``<name>.<label>-<UTC time>`` beside it, 0600, and return the new path.

    ``sidecars`` are suffixes of files that belong with it (SQLite's ``-wal``
    and ``-shm``): each is renamed to the new name plus that suffix, so the
    copy opens as it was. Only the newest :data:`KEEP_SET_ASIDE` copies of a
    file are kept. Raises OSError if ``path`` cannot be renamed.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # Within one second: .1, .2, ... after the last one, so the names keep the order.
    same = [_aside_order(p.name)[1] for p in path.parent.glob(f"{path.name}.{label}-{stamp}*")]
    suffix = f".{max(same) + 1}" if same else ""
    aside = path.with_name(f"{path.name}.{label}-{stamp}{suffix}")
    os.rename(path, aside)
    for suffix in sidecars:
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    for copy in (aside, *(aside.with_name(aside.name + s) for s in sidecars)):
        # Never through a symlink; a link itself has no mode to set (Linux refuses).
        with contextlib.suppress(OSError, NotImplementedError):
            os.chmod(copy, 0o600, follow_symlinks=False)
    _prune(path, label, sidecars)
    return aside


def _prune(path: Path, label: str, sidecars: tuple[str, ...]) -> None:
    """Delete all but the newest KEEP_SET_ASIDE copies of ``path`` set aside as ``label``."""
    prefix = f"{path.name}.{label}-"
    copies = sorted(
        (_aside_order(p.name), p)
        for p in path.parent.glob(f"{prefix}*")
        if not any(p.name.endswith(s) for s in sidecars)
    )
    for _, old in copies[:-KEEP_SET_ASIDE]:
        for stale in (old, *(old.with_name(old.name + s) for s in sidecars)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        log.info("deleted %s: only the newest %d set-aside copies are kept", old, KEEP_SET_ASIDE)


def _aside_order(name: str) -> tuple[str, int]:
    """``...-20261201T221000Z.2...`` → ("20261201T221000Z", 2): the order they were set aside."""
    found = _STAMP.search(name)
    if found is None:
        return "", 0
    return found[1], int(found[2] or 0)


_STAMP = re.compile(r"-(\d{8}T\d{6}Z)(?:\.(\d+))?")
