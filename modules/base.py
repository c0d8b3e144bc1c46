"""The contract every resource kind follows.

A kind lives in one file of this package (``modules/file.py``), subclasses
:class:`Kind` and registers itself with :func:`modules.registry.register`.
For every resource the engine (``agent/engine.py``) does::

    spec    = kind.parse(raw_spec)          # pure: validate, raise SpecError(field)
    state   = kind.read(ctx, spec)          # observe the system
    changes = kind.diff(spec, state)        # pure: [] when converged
    kind.apply(ctx, spec, state, changes)   # enforce only; never in noop/audit

A dry run is parse + read + diff. Kinds never sleep, retry or catch
everything: ordering, retries, modes and failure isolation belong to the
engine. The server imports only ``parse`` (to refuse bad manifests at push)
and the class attributes (``refreshable``, to refuse a ``notify`` to a kind
that cannot be refreshed).

A kind that can be *refreshed* (a service: restart or reload) sets
``refreshable = True`` and implements :meth:`Kind.refresh`; resources that
``subscribe`` to others (or are ``notify``-ed by them) are refreshed when one
of those was changed in the same run. See :meth:`Kind.refresh` for the
contract.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Generic, TypeVar


class Status(enum.StrEnum):
    """One vocabulary for a resource's outcome, everywhere (agent, wire, store, CLI)."""

    IN_SYNC = "in_sync"  # already as desired
    REPAIRED = "repaired"  # was different, fixed by this run
    DRIFTED = "drifted"  # different, not fixed (noop or audit)
    FAILED = "failed"  # could not be evaluated or changed; error says why
    SKIPPED = "skipped"  # a resource it requires failed or was skipped
    UNKNOWN = "unknown"  # could not be evaluated, e.g. depends on an unapplied change


class Mode(enum.StrEnum):
    """What a run may do to a resource."""

    ENFORCE = "enforce"  # read, diff, apply
    AUDIT = "audit"  # read, diff, report drifted; never apply


@dataclasses.dataclass(frozen=True)
class Change:
    """One field that differs: what was observed and what is desired.

    Values are short human-readable renderings (``"0644"``, ``"absent"``,
    ``"sha256:1f2e… (12 bytes)"``) because they go straight into reports.
    """

    field: str
    observed: str
    desired: str

    def __str__(self) -> str:
        return f"{self.field}: {self.observed} → {self.desired}"


@dataclasses.dataclass(frozen=True)
class Context:
    """The outside world as a kind may see it; passed in, never global.

    ``root`` confines everything a kind touches: ``/`` on a real host, a
    sandbox directory in the demo and in tests. Kinds map an absolute path
    from a spec to the host with :meth:`host_path`.
    """

    root: Path = Path("/")
    log: logging.Logger = dataclasses.field(default_factory=lambda: logging.getLogger("plumb"))
    #: Named network namespace (``ip netns``) that network kinds act in; None is
    #: the namespace the agent itself runs in, which is what a real host uses.
    netns: str | None = None

    def host_path(self, path: str) -> Path:
        """Where the absolute spec path ``path`` lives on this host (under ``root``).

        Refuses ``..`` here, once, so no kind can be talked into climbing out of
        its root, whatever its own parser checks.
        """
        pure = PurePosixPath(path)
        if not pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"{path!r} is not an absolute path without '..'")
        return self.root / pure.relative_to("/")


SpecT = TypeVar("SpecT")
StateT = TypeVar("StateT")


class Kind(abc.ABC, Generic[SpecT, StateT]):
    """One resource kind: a typed spec, how to observe it, diff it and change it."""

    #: The name manifests use (``kind: file``); unique in the registry.
    name: ClassVar[str] = ""

    @abc.abstractmethod
    def parse(self, raw: Mapping[str, Any]) -> SpecT:
        """Validate a raw spec mapping into a typed spec. Pure; raises SpecError."""

    @abc.abstractmethod
    def read(self, ctx: Context, spec: SpecT) -> StateT:
        """Observe the current state of the thing ``spec`` describes."""

    @abc.abstractmethod
    def diff(self, spec: SpecT, state: StateT) -> list[Change]:
        """What must change to get from ``state`` to ``spec``. Pure; [] when converged."""

    @abc.abstractmethod
    def apply(self, ctx: Context, spec: SpecT, state: StateT, changes: list[Change]) -> None:
        """Make the changes. Called only in enforce mode and only with changes."""

    #: A change of this kind can cut the agent off its server (firewall, routes).
    #: The engine then applies it with confirm-or-revert: it keeps the state
    #: read before the change, and if the agent cannot reach the server over a
    #: fresh connection afterwards, it calls :meth:`restore` with that state.
    #: A risky kind must implement :meth:`restore`.
    risky: ClassVar[bool] = False

    def restore(self, ctx: Context, spec: SpecT, snapshot: StateT) -> None:
        """Put back exactly what ``read`` observed before a change (``snapshot``).

        Only for risky kinds. ``spec`` says what the resource manages (which
        table, which route key), ``snapshot`` what to put back, including
        "absent". It must not fail half-way: like ``apply``, one atomic step
        where the system allows it.
        """
        raise NotImplementedError(f"kind {self.name!r} cannot restore a snapshot")

    #: Whether :meth:`watch` is implemented (the agent then need not poll this kind).
    watchable: ClassVar[bool] = False

    def watch(
        self,
        ctx: Context,
        specs: Sequence[SpecT],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Block until ``stop`` is set, calling ``on_change`` whenever something that
        one of ``specs`` manages may have changed (inotify, netlink, ...).

        Optional. The agent runs it in a thread of its own, debounces the calls
        and runs the catalog; a kind only says *that* something changed. Events
        caused by the agent's own applies are the agent's to ignore.
        """
        raise NotImplementedError(f"kind {self.name!r} has no watcher")

    #: Whether :meth:`refresh` is implemented, i.e. whether resources of this kind
    #: may ``subscribe`` to others or be named in another's ``notify``. The server
    #: refuses either relation at push time when the receiving kind is not
    #: refreshable; the message lists the kinds that are.
    refreshable: ClassVar[bool] = False

    def refresh(self, ctx: Context, spec: SpecT, applied: Sequence[Change]) -> Change | None:
        """Something this resource subscribes to was changed in this run: restart/reload.

        Only for refreshable kinds. **The engine decides when, the kind decides
        what.** The engine calls it at most once per resource per run, right
        after this resource's own read → diff → apply → verify, in graph order
        (every resource it subscribes to has been handled by then), and only if
        all of these hold:

        - at least one resource it subscribes to was ``repaired`` in this run
          (changed by this run; ``in_sync`` ones never trigger a refresh);
        - the run is an enforce run and this resource's mode is ``enforce``
          (a dry evaluation never calls it: it reports the resource
          ``drifted`` with a "refresh pending" change instead);
        - this resource itself ended ``in_sync`` or ``repaired`` (not failed,
          reverted, held or skipped).

        ``applied`` is what the engine applied to this very resource earlier in
        the same run: the changes it passed to :meth:`apply`, or ``()`` when the
        resource was already in sync. Use it to avoid doing work twice: a
        service that ``applied`` just started (or restarted) need not be
        restarted again, so return None. What a refresh means for ``spec`` is
        the kind's call too: a service whose spec says it should be stopped
        returns None rather than starting it. ``ctx`` and ``spec`` are the ones
        :meth:`apply` got.

        Return the :class:`Change` made, for the report, with ``field`` naming
        the action and ``observed``/``desired`` short renderings, e.g.
        ``Change("restart", "running", "restarted")``; do not name the
        notifiers, the engine appends ``(notified by file/etc/web.conf, ...)``
        to ``desired``. The resource is then reported ``repaired``, with this
        change after any changes of its own. Return None when nothing was
        needed (its status is left as it was).

        Like :meth:`apply`: one step, no sleeping or retrying, and failures are
        raised as :class:`modules.errors.ApplyError` (a ModuleError) with the
        command's output, e.g. ``ApplyError("systemctl restart web failed",
        output=stderr)``; the engine reports the resource ``failed`` with the
        error ``refresh failed (notified by <ids>): <message>`` (keeping the
        changes already applied), and skips what requires or subscribes to
        it. Any other exception is treated as a bug: failed, with its type,
        and logged with a traceback. Refreshes are not guarded by
        confirm-or-revert: there is no snapshot to go back to, so a risky kind
        should not be refreshable.
        """
        raise NotImplementedError(f"kind {self.name!r} cannot be refreshed")
