"""The cached catalog: the last one the server sent that verified, kept in ``catalog.pb``.

The daemon keeps enforcing it while the server is away, so it is verified
against the pinned CA before it is written and again whenever it is read (the
file could have been tampered with). The session writes it, the runner reads
it, ``plumb-agent status`` asks its revision; none of them needs the others.
"""

from __future__ import annotations

import logging

from agent.errors import CatalogRejected
from agent.state import StateDir, write_atomic
from agent.tls import verify_catalog
from modules.catalog import Catalog
from protos import plumb_pb2 as pb

log = logging.getLogger("plumb.agent")


class CatalogCache:
    def __init__(self, state: StateDir, node: str) -> None:
        self.state = state
        self.node = node

    def load(self) -> Catalog | None:
        """The cached catalog, verified again; None if there is none. CatalogRejected if bad."""
        try:
            signed = pb.SignedCatalog.FromString(self.state.catalog.read_bytes())
        except FileNotFoundError:
            return None
        # It was verified, time included, when it arrived (accept): enforcing
        # it must not depend on this host's clock (agent.tls.verify_catalog).
        return verify_catalog(signed, self.state.ca.read_bytes(), self.node, check_time=False)

    def revision(self) -> int:
        """The cached catalog's revision; 0 when there is none or it does not verify."""
        try:
            cached = self.load()
        except CatalogRejected as exc:
            log.error("cached catalog rejected: %s", exc)
            return 0
        return cached.revision if cached else 0

    def accept(self, signed: pb.SignedCatalog) -> Catalog:
        """Verify a catalog from the server and cache it; CatalogRejected if it does not verify."""
        catalog = verify_catalog(signed, self.state.ca.read_bytes(), self.node)
        write_atomic(self.state.catalog, signed.SerializeToString())
        return catalog
