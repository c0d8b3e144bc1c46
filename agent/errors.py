"""Errors raised by the agent.

    PlumbAgentError             anything the agent raises on purpose
    ├── CatalogError            a catalog cannot be run as a whole
    │                           (a require naming a missing id, a require
    │                           cycle, one id declared twice)
    ├── CatalogRejected         a catalog does not parse, or its signature or signer
    │   │                       does not verify, or it is another node's
    │   └── CatalogNotValidNow  its signer's certificate is expired or not yet
    │                           valid: a matter of the clock, not of the file
    ├── NoCatalog               nothing to run: no catalog received or cached yet
    ├── NotEnrolled             the state dir holds no enrollment
    ├── EnrollError             enrollment failed (unreachable, CA pin, token refused)
    ├── ConfigError             the settings file is unreadable or says something wrong
    ├── SpoolError              the report spool cannot be read or written
    └── AuditLockError          the audit lock cannot be set, lifted or read
        └── UntrustedLock       what is at the lock's path is not a lock this agent
                                can trust (a symlink, another user's file): ignored

Errors raised by resource kinds live in :mod:`modules.errors`; the engine
turns those into a resource's status and never lets them escape a run.
Library errors (grpc, sqlite, OS) are translated into these at the boundary
with ``raise ... from exc``.
"""

from __future__ import annotations


class PlumbAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class CatalogError(PlumbAgentError):
    """The catalog cannot be run as a whole; the message names the problem.

    The server refuses such catalogs at push time, but the agent checks again
    because it never trusts what it receives blindly.
    """


class CatalogRejected(PlumbAgentError):
    """A catalog failed verification; it is never cached or applied."""


class CatalogNotValidNow(CatalogRejected):
    """The catalog's signer certificate is not valid at this moment (expired, or not yet).

    Unlike the other rejections this depends on the clock, which may be wrong
    for a while (a host booting with a stale clock), so a cached catalog
    rejected for this is not used but kept.
    """


class NoCatalog(PlumbAgentError):
    """There is no catalog to run yet."""


class NotEnrolled(PlumbAgentError):
    """This node has not been enrolled; the message says how to."""


class EnrollError(PlumbAgentError):
    """Enrollment failed; the message says why (and what to check)."""


class RenewalFailed(PlumbAgentError):
    """The node's certificate could not be renewed this time; the message says why."""


class ConfigError(PlumbAgentError):
    """The settings file cannot be used; the message names the file and the setting."""


class SpoolError(PlumbAgentError):
    """The report spool (spool.db) cannot be read or written; the message names it and why."""


class AuditLockError(PlumbAgentError):
    """The audit lock (agent/auditlock.py) cannot be set, lifted or read; the message says why."""


class UntrustedLock(AuditLockError):
    """Something is at the audit lock's path that no ``audit-lock on`` left: it locks nothing.

    A symlink (never followed), something other than a regular file, or a
    file another user owns or may write.
    """
