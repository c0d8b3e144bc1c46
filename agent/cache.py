"""The cached catalog: the last one the server sent that verified, kept in ``catalog.pb``.

The daemon keeps enforcing it while the server is away, so it is verified
against the pinned CA before it is written and again whenever it is read (the
file could have been tampered with). The session writes it, the runner reads
it, ``plumb-agent status`` asks about it; none of them needs the others.

A cached catalog that does not parse or verify (truncated, garbage, signed by
someone else, another node's) is never applied, and never stops the agent
either: :meth:`CatalogCache.load` sets it aside as
``catalog.pb.rejected-<UTC time>`` (kept for inspection), logs that once, notes
the loss for the server (agent/losses.py), and answers "no catalog". The
next hello then says applied revision 0, so the server sends a fresh one,
which is verified and cached like any other.

The signer certificate's validity period is checked when a catalog arrives
(:meth:`CatalogCache.accept`), not when the cached copy is read: enforcing a
catalog that verified must not depend on this host's clock being right (a
clock a day behind would otherwise stop every repair); the log says when the
clock looks wrong (agent.tls).

A catalog older than the one cached is refused, however well it verifies:
desired state is never rolled back by replaying an old signed catalog (a
rollback is pushed as a new, higher revision).

A catalog that verified but cannot be written (the state dir takes no
writes, agent/state.py) is kept in memory and used from there — it is
enforced, and acknowledged as accepted — and written once it can be.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading

from google.protobuf.message import DecodeError

from agent.errors import CatalogRejected
from agent.losses import CACHED_CATALOG, LossLog
from agent.state import StateDir, set_aside
from agent.tls import verify_catalog
from modules.catalog import Catalog
from protos import plumb_pb2 as pb

log = logging.getLogger("plumb.agent")


@dataclasses.dataclass(frozen=True)
class CacheStatus:
    """What ``plumb-agent status`` says about the cache; nothing is changed to find out."""

    revision: int  # 0 = no usable catalog
    #: Why there is no usable catalog when there is a file, or why the last one was set aside.
    problem: str | None = None


class CatalogCache:
    def __init__(self, state: StateDir, node: str, losses: LossLog | None = None) -> None:
        self.state = state
        self.node = node
        self.losses = losses if losses is not None else LossLog(state)
        # The session thread (hello, welcome, a new catalog) and the runner
        # both use the cache: a catalog is set aside only by the one that read
        # it, never after another thread cached a good one in its place.
        self._lock = threading.Lock()
        self._unsaved: pb.SignedCatalog | None = None  # verified, not written yet

    def load(self) -> Catalog | None:
        """The cached catalog, verified again; None if there is none that can be used."""
        found = self._load()
        return found[0] if found else None

    def revision(self) -> int:
        """The cached catalog's revision; 0 when there is none that can be used."""
        cached = self.load()
        return cached.revision if cached else 0

    def applied(self) -> tuple[int, str]:
        """The cached catalog's revision and its payload's SHA-256 (hex); (0, "") if none.

        The hello says both: a node's catalog can be compiled again at the
        same revision (its labels or facts now select other manifests), and
        the digest is how the server tells that this node has not got it.
        """
        found = self._load()
        if found is None:
            return 0, ""
        catalog, raw = found
        return catalog.revision, hashlib.sha256(
            pb.SignedCatalog.FromString(raw).payload
        ).hexdigest()

    def _load(self) -> tuple[Catalog, bytes] | None:
        """The cached catalog verified again, and the signed catalog it came from."""
        with self._lock:
            if not self._save():
                assert self._unsaved is not None
                raw = self._unsaved.SerializeToString()
                return self._verified(raw), raw
            try:
                raw, identity = _read(self.state.catalog)
            except FileNotFoundError:
                return None
            try:
                return self._verified(raw), raw
            except CatalogRejected as exc:
                self._set_aside(identity, exc)
                return None

    def accept(self, signed: pb.SignedCatalog) -> Catalog:
        """Verify a catalog from the server and cache it; CatalogRejected if it does not verify."""
        catalog = verify_catalog(signed, self.state.ca.read_bytes(), self.node)
        with self._lock:
            applied = self._cached_revision()
            if catalog.revision < applied:
                raise CatalogRejected(
                    f"revision {catalog.revision} is older than revision {applied}, which this "
                    "node has applied: refused as a replay (a rollback is pushed as a new revision)"
                )
            self._unsaved = signed
            self._save()
        return catalog

    def catch_up(self) -> bool:
        """Write a catalog that waits in memory; whether none waits now."""
        with self._lock:
            return self._save()

    def _cached_revision(self) -> int:
        """The revision cached, in memory or on disk (under _lock); 0 if none verifies."""
        raw = self._unsaved.SerializeToString() if self._unsaved is not None else None
        try:
            return self._verified(raw if raw is not None else _read(self.state.catalog)[0]).revision
        except (OSError, CatalogRejected):  # none, or one load() sets aside
            return 0

    def _save(self) -> bool:
        """Write the catalog waiting in memory, if any (under _lock); whether none waits now."""
        if self._unsaved is None:
            return True
        if not self.state.keep(self.state.catalog, self._unsaved.SerializeToString()):
            return False
        self._unsaved = None
        return True

    def status(self) -> CacheStatus:
        """The cached revision, or why there is none; reads only (``plumb-agent status``).

        Setting a bad catalog aside is the daemon's business: done here, a
        running daemon would not know to ask the server for a fresh one.
        """
        try:
            raw, _ = _read(self.state.catalog)
        except FileNotFoundError:
            rejected = [x.detail for x in self.losses.recent() if x.what == CACHED_CATALOG]
            why = f"the cached one was rejected: {rejected[-1]}" if rejected else None
            return CacheStatus(0, why)
        try:
            return CacheStatus(self._verified(raw).revision)
        except CatalogRejected as exc:
            return CacheStatus(0, f"{self.state.catalog} is not used: {exc}")
        except (OSError, ValueError) as exc:  # our CA certificate is missing or unreadable
            return CacheStatus(0, f"{self.state.catalog} cannot be verified: {exc}")

    def _verified(self, raw: bytes) -> Catalog:
        try:
            signed = pb.SignedCatalog.FromString(raw)
        except DecodeError as exc:
            raise CatalogRejected(f"it does not parse ({len(raw)} bytes): {exc}") from exc
        # It was verified, time included, when it arrived (accept).
        return verify_catalog(signed, self.state.ca.read_bytes(), self.node, check_time=False)

    def _set_aside(self, identity: tuple[int, int], why: CatalogRejected) -> None:
        path = self.state.catalog
        try:
            if _identity(os.lstat(path)) != identity:
                return  # replaced since it was read (run --once cached a new one): not ours
            aside = set_aside(path, "rejected")
        except FileNotFoundError:
            return  # another process set it aside first
        except OSError as exc:
            log.error("cached catalog rejected (%s) and cannot be set aside: %s", why, exc)
            return
        detail = f"{path.name} rejected: {why}; kept as {aside.name}"
        log.error(
            "cached catalog %s rejected: %s; set aside as %s, asking the server for a fresh one",
            path,
            why,
            aside,
        )
        self.losses.record(CACHED_CATALOG, 1, detail)


def _read(path: os.PathLike[str]) -> tuple[bytes, tuple[int, int]]:
    """The file's bytes and identity (device, inode), read through one descriptor."""
    with open(path, "rb") as stream:
        return stream.read(), _identity(os.fstat(stream.fileno()))


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino
