"""The contract every resource kind follows.

A kind lives in one file of this package (``modules/file.py``), subclasses
:class:`Kind` and registers itself with :func:`modules.registry.register`.
For every resource the engine (``agent/engine.py``) does::

    spec    = kind.parse(raw_spec)          # pure: validate, raise SpecError(field)
    state   = kind.read(ctx, spec)          # observe the system
    changes = kind.diff(spec, state)        # pure: [] when converged
    kind.apply(ctx, spec, state, changes)   # enforce only; never in noop/audit

A dry run is parse + read + diff. Kinds never sleep, retry or catch
everything: ordering, retries, timeouts, modes and failure isolation belong to
the engine. Kinds run commands only through :meth:`Context.run` (and
:meth:`Context.spawn`), which kill a command with its whole process group at
the deadline the engine set for the resource (:attr:`Kind.timeout_s`, or the
resource's own ``timeout``) and raise :class:`~modules.errors.TimedOut`; a
kind that can tell from a command's output that waiting will help (another
package manager holds the lock) raises :class:`~modules.errors.Busy`, which
the engine retries. The server imports only the pure parts: ``parse`` and
``identities`` (to refuse bad manifests and two resources that manage one
object at push) and the kind's capabilities (to refuse a ``notify`` to a
kind that cannot be refreshed).

What a kind can do beyond that is a type it inherits, never a flag:

- :class:`Watchable`: ``watch`` tells the agent at once when something
  managed may have changed (inotify, netlink, D-Bus);
- :class:`Refreshable`: ``refresh`` restarts or reloads a resource after
  something it subscribes to (or that notifies it) changed in the same run;
- :class:`Batchable`: ``apply_batch`` changes several resources in one step
  (one apt or dnf transaction);
- :class:`Risky`: its changes can cut the agent off its server, so the
  engine applies them with confirm-or-revert and ``restore`` puts the
  previous state back.

Every kind may say what a resource looks like now, beyond what its spec
manages (a service's main process: pid, memory, uptime), with
:meth:`Kind.describe`; the engine puts that in the report as ``observed``.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from modules.errors import OperationError, TimedOut, Unavailable
from modules.executor import Child, Executor, shown

if TYPE_CHECKING:
    from modules.spec import Field

#: A kind's :attr:`Kind.timeout_s` unless it says otherwise.
DEFAULT_TIMEOUT_S = 60.0


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
    ``logged`` is what the agent's log says instead, when a kind will not
    have the values there (a file's content, shown in a report, is only its
    hash in the log); None: the change as it is.
    """

    field: str
    observed: str
    desired: str
    logged: str | None = dataclasses.field(default=None, compare=False)
    #: A unified diff of observed → desired, for a small text (a file's content);
    #: None: no diff to show. Never for a sensitive resource (the engine drops it).
    diff: str | None = dataclasses.field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.field}: {self.observed} → {self.desired}"

    def for_log(self) -> str:
        return self.logged if self.logged is not None else str(self)


@dataclasses.dataclass(frozen=True)
class Deadline:
    """When the engine wants a resource's work over: ``at`` on the context's clock.

    ``limit_s`` is the timeout it was set from, the number a timed-out
    resource's error names ("timed out after 600 s").
    """

    at: float
    limit_s: float


@dataclasses.dataclass(frozen=True)
class Context:
    """The outside world as a kind may see it; passed in, never global.

    ``root`` confines everything a kind touches: ``/`` on a real host, a
    sandbox directory in the demo and in tests. Kinds map an absolute path
    from a spec to the host with :meth:`host_path`.

    Commands go through :meth:`run` (and :meth:`spawn`), never
    :mod:`subprocess`: each runs in its own process group and is killed, as a
    group, at the resource's :attr:`deadline` (:mod:`modules.executor`).
    """

    root: Path = Path("/")
    log: logging.Logger = dataclasses.field(default_factory=lambda: logging.getLogger("plumb"))
    #: Named network namespace (``ip netns``) that network kinds act in; None is
    #: the namespace the agent itself runs in, which is what a real host uses.
    netns: str | None = None
    #: The monotonic clock deadlines are on (seconds); a test may pass its own.
    clock: Callable[[], float] = time.monotonic
    #: When this resource's commands must be over; set by the engine for each
    #: resource (:meth:`with_timeout`). None: no limit.
    deadline: Deadline | None = None
    executor: Executor = dataclasses.field(default_factory=Executor)
    #: How a :meth:`Watchable.watch` says it cannot watch everything the way it
    #: should and makes do with less (it polls paths inotify would not take):
    #: a sentence naming what, how and why, each time that changes, and None
    #: once it watches everything properly again. Never called means never
    #: degraded. The agent shows it as the node condition ``watch_polling``
    #: (``agent/watch.py``) and forgets it when the watch ends.
    watch_degraded: Callable[[str | None], None] = lambda sentence: None

    def host_path(self, path: str) -> Path:
        """Where the absolute spec path ``path`` lives on this host (under ``root``).

        Refuses ``..`` here, once, so no kind can be talked into climbing out of
        its root, whatever its own parser checks.
        """
        pure = PurePosixPath(path)
        if not pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"{path!r} is not an absolute path without '..'")
        return self.root / pure.relative_to("/")

    def with_timeout(self, limit_s: float) -> Context:
        """This context with a deadline ``limit_s`` seconds from now (the engine's to set)."""
        return dataclasses.replace(self, deadline=Deadline(self.clock() + limit_s, limit_s))

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (0 when past it); None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline.at - self.clock())

    def run(
        self,
        argv: Sequence[str],
        *,
        failure: type[OperationError],
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to its end, within what is left of the deadline; its exit status,
        stdout and stderr (text) are the caller's to judge.

        ``env`` adds to the agent's environment; stdin is ``input``, or empty.
        Raises :class:`~modules.errors.Unavailable` when the program does not
        exist, ``failure`` (the kind's ReadError or ApplyError) when it cannot
        be started, and :class:`~modules.errors.TimedOut`, with the output so
        far, when the deadline passes first: the command's whole process
        group is killed then (SIGTERM, SIGKILL after a grace).
        """
        remaining = self.remaining_s()
        if remaining == 0.0:
            assert self.deadline is not None
            limit = self.deadline.limit_s
            raise TimedOut(f"{shown(argv)} not started: timed out after {limit:g} s")
        try:
            return self.executor.run(
                argv,
                input=input,
                env=env,
                timeout_s=remaining,
                limit_s=None if self.deadline is None else self.deadline.limit_s,
            )
        except FileNotFoundError as exc:
            raise Unavailable(f"{exc.filename or argv[0]} not found") from exc
        except OSError as exc:
            raise failure(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc

    def spawn(self, argv: Sequence[str], *, failure: type[OperationError]) -> Child:
        """Start a long-lived ``argv`` (a watcher's ``nft monitor``) in its own process group.

        Not bound by the deadline: the caller ends it with ``Child.close``
        (SIGTERM to the group, SIGKILL after a grace). Errors as for :meth:`run`.
        """
        try:
            return self.executor.spawn(argv)
        except FileNotFoundError as exc:
            raise Unavailable(f"{exc.filename or argv[0]} not found") from exc
        except OSError as exc:
            raise failure(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc


SpecT = TypeVar("SpecT")
StateT = TypeVar("StateT")


@dataclasses.dataclass(frozen=True, order=True)
class Identity:
    """A real object on a host that a resource manages: ``path /etc/motd``, ``unit web.service``.

    ``namespace`` says what sort of object it is, independently of the kind
    that manages it: the file kind and a service's unit file both manage a
    ``path``. Two resources in one node's catalog with an equal identity would
    fight over that object (each repairing what the other did), so the server
    refuses such a catalog at push time, naming both, whatever their kinds.
    """

    namespace: str  # "path", "unit", "package", "nftables table", "route"
    key: str  # normalised, so that equal objects give equal keys

    def __str__(self) -> str:
        return f"{self.namespace} {self.key}"


class Kind(abc.ABC, Generic[SpecT, StateT]):
    """One resource kind: a typed spec, how to observe it, diff it and change it."""

    #: The name manifests use (``kind: file``); unique in the registry.
    name: ClassVar[str] = ""
    #: The spec's fields, declared once (:class:`modules.spec.Field`): ``parse``
    #: reads them, unknown-field errors list them, reference docs show them.
    fields: ClassVar[tuple[Field, ...]] = ()
    #: Seconds the engine gives one resource of this kind: its read, apply,
    #: refresh and the reads around them, under one deadline
    #: (:attr:`Context.deadline`). A command still running then is killed
    #: with its process group and the resource fails "timed out after N s".
    #: A resource's own ``timeout`` (manifest) overrides it. Only commands run
    #: through :meth:`Context.run` can be cut short: work inside the agent
    #: (file I/O, netlink) runs to its end.
    timeout_s: ClassVar[float] = DEFAULT_TIMEOUT_S

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if issubclass(cls, Risky) and issubclass(cls, Batchable):
            # Confirm-or-revert snapshots, confirms and restores one resource
            # at a time; a batch would have to be reverted as a whole.
            raise TypeError(f"kind class {cls.__name__}: a risky kind cannot be batchable")

    @abc.abstractmethod
    def parse(self, raw: Mapping[str, Any]) -> SpecT:
        """Validate a raw spec mapping into a typed spec. Pure; raises SpecError."""

    @abc.abstractmethod
    def identities(self, spec: SpecT) -> tuple[Identity, ...]:
        """The real objects ``spec`` manages (a file: its path). Pure, from the parsed spec.

        Whatever the kind's own semantics make unique on one host: the key the
        system itself uses for the object (the kernel's route key, a unit's
        full name), normalised so that two ways of writing one object give
        one identity.
        """

    @abc.abstractmethod
    def read(self, ctx: Context, spec: SpecT) -> StateT:
        """Observe the current state of the thing ``spec`` describes."""

    @abc.abstractmethod
    def diff(self, spec: SpecT, state: StateT) -> list[Change]:
        """What must change to get from ``state`` to ``spec``. Pure; [] when converged."""

    @abc.abstractmethod
    def apply(self, ctx: Context, spec: SpecT, state: StateT, changes: list[Change]) -> None:
        """Make the changes. Called only in enforce mode and only with changes."""

    def describe(self, ctx: Context, spec: SpecT, state: StateT) -> Mapping[str, str]:
        """What the resource looks like now, for the report (``observed``); default: nothing.

        Optional, for facts an operator wants beside the status that the spec
        does not manage: a service's main process (``{"main_pid": "812",
        "memory_rss": "12.4 MiB", "uptime": "3605 s"}``). Keys are short
        snake_case names, values short human-readable renderings; keep it to
        a handful, since it is sent with every report.

        The engine calls it once per resource per run, on the newest state
        this run read of the resource: the verifying read after an apply, the
        read of an in-sync or dry (drifted) resource, and after a refresh a
        read made for this purpose (a restart changes the very process being
        described). It is not called when no current state was read: a read
        or parse failure, a failed apply, a revert, held or skipped resources.
        Prefer rendering ``state``; a little I/O for facts ``read`` does not
        need (psutil on a pid) is fine, but it must not change anything. An
        exception here never fails the resource: the engine logs it with a
        traceback and reports nothing observed.
        """
        return {}


# --- what a kind can do beyond read/diff/apply: types the engine checks ---------------
#
# A kind class lists the capabilities it has among its bases, e.g.
# ``class ServiceKind(Kind[ServiceSpec, ServiceState], Watchable[ServiceSpec],
# Refreshable[ServiceSpec])``; each one's method is abstract, so a kind that
# claims a capability and lacks its method cannot even be instantiated, and
# the engine asks ``isinstance(kind, Refreshable)`` instead of trusting a flag.


class Removable(abc.ABC, Generic[SpecT]):
    """A kind whose object Plumb can remove when its manifest is purged.

    ``plumb manifest rm NAME --purge`` turns each resource of a removable
    kind into the spec :meth:`removal` gives (the object made absent); the
    resources of other kinds (a service) are left as they are, no longer
    managed.
    """

    @abc.abstractmethod
    def removal(self, spec: SpecT) -> dict[str, Any]:
        """The raw spec that removes what ``spec`` manages: its identity and ``state: absent``.

        Pure. It must manage exactly the identities ``spec`` does, and be
        accepted by the kind's own ``parse``.
        """


class Risky(abc.ABC, Generic[SpecT, StateT]):
    """A kind whose changes can cut the agent off its server (firewall, routes).

    The engine applies its changes with confirm-or-revert: it keeps the state
    read before the change, and if the agent cannot reach the server over a
    fresh connection afterwards, it calls :meth:`restore` with that state. A
    risky kind cannot be :class:`Batchable` (refused when the class is
    defined), and should not be :class:`Refreshable`: a refresh has no
    snapshot to go back to.
    """

    @abc.abstractmethod
    def restore(self, ctx: Context, spec: SpecT, snapshot: StateT) -> None:
        """Put back exactly what ``read`` observed before a change (``snapshot``).

        ``spec`` says what the resource manages (which
        table, which route key), ``snapshot`` what to put back, including
        "absent". It must not fail half-way: like ``apply``, one atomic step
        where the system allows it.
        """


class Watchable(abc.ABC, Generic[SpecT]):
    """A kind that can watch its resources, so the agent learns of drift at once."""

    @abc.abstractmethod
    def watch(
        self,
        ctx: Context,
        specs: Sequence[SpecT],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Block until ``stop`` is set, calling ``on_change`` whenever something that
        one of ``specs`` manages may have changed (inotify, netlink, ...).

        The agent runs it in a thread of its own, debounces the calls
        and runs the catalog; a kind only says *that* something changed. Events
        caused by the agent's own applies are the agent's to ignore. A watch
        that can only watch some of it, or only less promptly, says so through
        :attr:`Context.watch_degraded` rather than going quietly deaf.
        """


class Refreshable(abc.ABC, Generic[SpecT]):
    """A kind that can be refreshed (a service: restart or reload).

    Only resources of such a kind may ``subscribe`` to others or be named in
    another's ``notify``; the server refuses either relation at push time
    otherwise, and the message lists the kinds that are refreshable.
    """

    @abc.abstractmethod
    def refresh(self, ctx: Context, spec: SpecT, applied: Sequence[Change]) -> Change | None:
        """Something this resource subscribes to was changed in this run: restart/reload.

        **The engine decides when, the kind decides
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


class Batchable(abc.ABC, Generic[SpecT, StateT]):
    """A kind whose changes are best made together (packages: one apt or dnf transaction)."""

    @abc.abstractmethod
    def apply_batch(
        self, ctx: Context, items: Sequence[tuple[SpecT, StateT, list[Change]]]
    ) -> None:
        """Make the changes of several resources of this kind in one step.

        For a package manager, one transaction, so
        dependencies are resolved once and a set of packages that only works
        together is never half-installed. **The engine decides what goes
        together, the kind only applies it.** Each item is ``(spec, state,
        changes)`` exactly as :meth:`apply` would get it for that resource
        alone: ``state`` read and ``changes`` (never empty) diffed just before,
        in this run. The engine calls it only in an enforce run, only with two
        or more items, in graph order, and only with resources that would each
        be applied on their own right now: mode ``enforce``, not held, every
        resource they require or subscribe to already evaluated and neither
        failed nor skipped (so nothing one item waits on is still pending,
        including another item). A lone resource with changes gets
        :meth:`apply`, so ``apply`` must keep working for one resource (it may
        simply call ``apply_batch`` with one item).

        Afterwards the engine verifies every item on its own (read + diff
        again) and reports each one separately: ``repaired``, or ``failed``
        with "still differs after apply: ...". Refreshes of subscribers and
        :meth:`describe` follow per resource, as for a single apply.

        Like :meth:`apply`: one step where the system allows it, no sleeping
        or retrying. On failure raise a :class:`modules.errors.ModuleError`
        (``ApplyError`` with the command's output, e.g. apt's "E: Unable to
        locate package nosuch"). The engine then owns the retry: it reads each
        item again and applies those that still differ one by one with
        :meth:`apply`, so one bad item fails alone with its own message and
        the others still converge. A batch that changed some items before
        failing is therefore fine, as long as each item is left in a state
        :meth:`read` can observe. Any other exception is treated as a bug:
        every item is failed with its type, without a retry, and it is logged
        with a traceback.
        """
