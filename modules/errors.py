"""Errors raised by resource kinds.

    ModuleError                 anything a kind raises on purpose
    ├── SpecError               a spec is wrong (pure validation; names the field)
    ├── Unavailable             the kind cannot work on this host (names the reason)
    └── OperationError          observing or changing the system failed
        ├── ReadError           read() could not observe the current state
        ├── ApplyError          apply() could not change the system
        ├── TimedOut            a command outlived its resource's deadline and was
        │                       killed with its process group (Context.run)
        └── Busy                transient: something else holds what the operation
                                needs (another apt/dpkg/rpm holds its lock); the
                                engine tries again with back-off

Kinds translate library and OS errors into these at the boundary
(``raise ApplyError(...) from exc``); the engine turns them into a resource's
``failed`` status with the message. ``TimedOut`` comes from
:meth:`modules.base.Context.run` itself, never from a kind; ``Busy`` is the
only error the engine retries, because only the kind can tell from a command's
output that waiting will help. Anything else escaping a kind is a bug,
which the engine still isolates and reports with its type.
"""

from __future__ import annotations


class ModuleError(Exception):
    """Base of every error a kind raises on purpose."""


class SpecError(ModuleError):
    """A resource spec is invalid.

    ``field`` is the dotted path inside the spec (``"mode"``, ``"rules.0.dport"``)
    so the manifest loader can point at the exact YAML line.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class Unavailable(ModuleError):
    """The kind (or its provider) cannot work on this host, e.g. ``nft not found``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"unavailable: {reason}")
        self.reason = reason


class OperationError(ModuleError):
    """Observing or changing the system failed.

    ``output`` carries what a command printed, so the report can show it.
    """

    def __init__(self, message: str, output: str = "") -> None:
        full = f"{message}: {output.strip()}" if output.strip() else message
        super().__init__(full)
        self.message = message
        self.output = output


class ReadError(OperationError):
    """read() could not observe the current state."""


class ApplyError(OperationError):
    """apply() could not change the system."""


class TimedOut(OperationError):
    """A command was still running at its resource's deadline; its process group was killed.

    ``message`` names the command and the limit ("apt-get ... timed out after
    600 s"), ``output`` is what it printed until then.
    """


class Busy(OperationError):
    """Something else holds what the operation needs, for now: another package
    manager's lock ("Could not get lock /var/lib/dpkg/lock-frontend").

    Transient by definition: the engine reads and applies the resource again
    after a back-off, within the resource's deadline.
    """
