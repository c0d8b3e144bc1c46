"""The agent daemon: a session with the server, and runs on push and on schedule.

Two threads of work:
- the main thread keeps a Session open, reconnecting with exponential backoff
  and full jitter (so a fleet does not reconnect in lockstep after an outage);
- APScheduler runs the catalog periodically (interval plus random splay) and
  whenever a new catalog arrives. Its single worker thread means runs never
  overlap, and the cached catalog keeps being enforced while the server is away.

Watchers (``agent/watch.py``, unless ``watch=False``) add runs with trigger
WATCH when something managed changes out of band; the periodic run remains
the catch-all for whatever no watcher sees. What is wrong with the node now
(the state dir's conditions, the watchers' and the audit lock's) goes with
every hello and heartbeat (agent/conditions.py).

The agent can upgrade itself through a ``package`` resource. Restarting then
and there would kill the run (and the dpkg or rpm transaction under it, which
systemd would take down with the agent's cgroup), so every process the agent
starts inherits ``PLUMB_AGENT_PID``; the package's scripts see it and, instead
of restarting the service, leave ``restart-requested`` in the state dir. After
the run has been reported, the daemon sees the flag, stops cleanly and
:attr:`Daemon.restart` tells ``plumb-agent daemon`` to exec the new version
in its place (same PID, so systemd sees no restart at all).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from agent import AGENT_VERSION, facts
from agent.cache import CatalogCache
from agent.conditions import Condition
from agent.flapping import FlapPolicy
from agent.losses import LossLog
from agent.renewal import CertificateRenewal
from agent.report import Trigger
from agent.runner import DEFAULT_CONFIRM_TIMEOUT_S, Runner
from agent.session import SessionClient
from agent.spool import Spool
from agent.state import StateDir
from agent.watch import Watchers
from modules.catalog import Catalog
from protos import plumb_pb2 as pb

log = logging.getLogger("plumb.agent")


#: Inherited by every process the agent starts (package managers, their scripts).
AGENT_PID_VARIABLE = "PLUMB_AGENT_PID"
BACKOFF_BASE_S = 0.5
#: The window while the server's host refuses connections (nothing listens).
REFUSED_WINDOW_S = 2.0
#: A session up this long counts as progress even if it acked nothing (idle).
STABLE_SESSION_S = 60.0
#: While the state dir takes no writes, how often it is tried again.
STATE_RETRY_S = 5.0
#: A session another process of this node took over is taken back after this
#: long at the earliest (see replaced_wait).
REPLACED_WAIT_S = 5.0


def backoff_window(attempt: int, error: str, cap_s: float) -> float:
    """Seconds over which to jitter the next reconnect after ``attempt`` failures.

    Exponential (full jitter over min(cap, 0.5 * 2**attempt)) whenever the
    server may be struggling: a handshake or call that failed or timed out.
    But a refused connection means nothing is listening, so retrying costs
    the server nothing; a short window brings a fleet back within seconds of
    a restart, still spread over the window rather than all at once.
    """
    window: float = min(cap_s, BACKOFF_BASE_S * 2.0 ** min(attempt, 10))
    return min(window, REFUSED_WINDOW_S) if "Connection refused" in error else window


def replaced_wait(times: int, cap_s: float) -> float:
    """Seconds to wait before taking back a session replaced ``times`` times in a row.

    The server keeps one session per node: a newer one ends the older. Who
    opened it is another process with this node's identity, most often a
    `plumb-agent run --once` beside the daemon, which needs its session for a
    few seconds: REPLACED_WAIT_S, so its run is reported before the daemon
    is back. Each time again in a row the window doubles (to ``cap_s``), so
    two hosts with one identity (a cloned disk) take turns every minute or
    so, saying so in their logs, instead of in a tight loop.
    """
    window = min(cap_s, REPLACED_WAIT_S * 2.0 ** min(times - 1, 10))
    return random.uniform(REPLACED_WAIT_S, max(REPLACED_WAIT_S, window))


class Daemon:
    def __init__(
        self,
        state: StateDir,
        root: Path,
        interval_s: float,
        splay_s: float,
        max_backoff_s: float = 60.0,
        watch: bool = True,
        confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S,
        flap_policy: FlapPolicy | None = None,
    ) -> None:
        self.state = state
        # A renewed identity a crash left half moved in: finished before it is read.
        state.finish_identity()
        self.enrollment = state.enrollment()
        self.renewal = CertificateRenewal(state, self.enrollment.node)
        # One log of losses for the cache and the spool: a loss found while
        # connected makes the daemon reconnect, so the next hello reports it.
        self.losses = LossLog(state)
        self.cache = CatalogCache(state, self.enrollment.node, self.losses)
        self.spool = Spool(state.spool, self.losses, state.unwritable)
        self.runner = Runner(
            state,
            self.cache,
            self.spool,
            root,
            self.enrollment.server,
            confirm_timeout_s,
            flap_policy,
        )
        self.interval_s = interval_s
        self.splay_s = splay_s
        self.max_backoff_s = max_backoff_s
        self.stop = threading.Event()
        #: Set when a package upgrade asked for a restart: exec the new version.
        self.restart = False
        self._session: SessionClient | None = None
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "misfire_grace_time": None},
        )
        self._every = IntervalTrigger(seconds=interval_s, jitter=splay_s)
        self._watchers = Watchers(root, self._request_watch_run) if watch else None

    def serve(self) -> None:
        """Run until :attr:`stop` is set (SIGTERM); a run in progress finishes first."""
        # This process is the new version already, whatever asked for a restart.
        with contextlib.suppress(FileNotFoundError):
            self.state.restart_requested.unlink()
        os.environ[AGENT_PID_VARIABLE] = str(os.getpid())
        # Enforce the cached catalog at once, before the server is even reached.
        self._watch(self._cached_catalog())
        self._scheduler.add_job(self._run, args=[Trigger.START])
        self._scheduler.add_job(
            self._run,
            self._every,
            args=[Trigger.SCHEDULE],
            id="schedule",
            max_instances=1,
        )
        self._scheduler.add_job(
            self._catch_up, IntervalTrigger(seconds=STATE_RETRY_S), id="catch-up", max_instances=1
        )
        self._scheduler.start()
        try:
            self._keep_session()
        finally:
            # Watchers first: once they are stopped nothing asks the scheduler for more.
            if self._watchers is not None:
                self._watchers.stop()
            if self._session is not None:
                self._session.close()
            self._scheduler.shutdown(wait=True)

    def _keep_session(self) -> None:
        attempt = replaced = 0
        host_facts = facts.gather(AGENT_VERSION)
        while not self.stop.is_set():
            session = SessionClient(
                self.state,
                self.enrollment,
                self.cache,
                self.spool,
                host_facts,
                on_catalog=self._on_catalog,
                conditions=self._conditions,
                renewal=self.renewal,
                dry_run=lambda catalog: self.runner.dry_run(catalog).to_wire(),
                # At most this long between two periodic runs: the interval and its splay.
                run_interval_s=self.interval_s + self.splay_s,
            )
            self._session = session
            session.start()
            self._await_established(session)
            while not (session.ended.wait(0.5) or self.stop.is_set() or self._lost_since(session)):
                pass
            lost = self._lost_since(session) and not session.ended.is_set()
            session.close()
            if lost and not self.stop.is_set():
                # Local state was lost (a cached catalog rejected: the server
                # must send a fresh one): a new hello says so, at once.
                log.info("local state lost since the hello: reconnecting to report it")
                continue
            if session.renewed and not self.stop.is_set():
                log.info("reconnecting with the renewed certificate")
                attempt = 0
                continue
            if session.replaced and not self.stop.is_set():
                replaced += 1
                self._taken_over(replaced)
                continue
            replaced = 0
            attempt = 0 if session.made_progress(STABLE_SESSION_S) else attempt + 1
            if not self.stop.is_set():
                self._backoff(attempt, session.error)

    def _conditions(self) -> list[Condition]:
        """What is wrong with this node now: its state dir's, its watchers', the audit lock.

        The audit lock is looked at here too (one lstat, each time the
        heartbeat gathers conditions), so that the server shows a lock within
        a second of its being set or lifted rather than at the next run.
        """
        watching = self._watchers.conditions() if self._watchers is not None else []
        held = [
            *self.state.conditions.current(),
            *self.renewal.conditions.current(),
            *watching,
            *self.runner.audit_lock.conditions(),
        ]
        return sorted(held, key=lambda c: c.name)

    def _lost_since(self, session: SessionClient) -> bool:
        sent = session.hello_generation
        return sent is not None and sent != self.losses.generation

    def _await_established(self, session: SessionClient) -> None:
        """Log once the server has answered (bench/agent.py times start-up by this line)."""
        while not (session.alive.wait(0.01) or session.ended.is_set() or self.stop.is_set()):
            pass
        if session.alive.is_set():
            log.info("session established with %s", self.enrollment.server)

    def _backoff(self, attempt: int, error: str) -> None:
        expired = self.renewal.expired_note()
        if expired is not None:
            log.error("%s", expired)
        delay = random.uniform(0, backoff_window(attempt, error, self.max_backoff_s))
        log.warning(
            "session with %s ended (%s); reconnecting in %.1fs",
            self.enrollment.server,
            error or "closed",
            delay,
        )
        self.stop.wait(delay)

    def _taken_over(self, times: int) -> None:
        delay = replaced_wait(times, self.max_backoff_s)
        log.warning(
            "session with %s taken over by another process with this node's identity "
            "(%d time(s) in a row: a plumb-agent run --once beside this daemon or, if it "
            "goes on, another host with this node's key); taking it back in %.1fs",
            self.enrollment.server,
            times,
            delay,
        )
        self.stop.wait(delay)

    def _on_catalog(self, signed: pb.SignedCatalog) -> None:
        log.info("catalog revision %d received", signed.revision)
        # The session calls this only for a catalog that Runner.accept verified.
        self._watch(Catalog.from_json(signed.payload))
        self._scheduler.add_job(self._run, args=[Trigger.PUSH])

    def _cached_catalog(self) -> Catalog | None:
        return self.cache.load()  # one that does not verify is set aside, and None

    def _watch(self, catalog: Catalog | None) -> None:
        """Watch ``catalog``; call just before queuing a run of it."""
        if self._watchers is not None and catalog is not None:
            self._watchers.start(catalog)

    def _catch_up(self) -> None:
        """While the state dir took no writes: once it takes one, write what waited in memory."""
        if not self.state.is_unwritable or not self.state.takes_writes():
            return
        if self.spool.catch_up() and self.cache.catch_up() and self.losses.catch_up():
            self.state.writable()  # the next heartbeat says so

    def _request_watch_run(self) -> None:
        self._scheduler.add_job(self._run, args=[Trigger.WATCH])

    def _run(self, trigger: Trigger) -> None:
        watchers = self._watchers
        if watchers is not None:
            watchers.run_started()
        report = None
        try:
            report = self.runner.run(trigger)
        except Exception:  # a broken run must not kill the scheduler thread
            log.exception("run failed")
            return
        finally:
            if watchers is not None:
                watchers.run_finished(report)
        session = self._session
        if report is not None and session is not None:
            session.flush()
        if self.state.restart_requested.exists():
            # The report is spooled (and sent, if connected): nothing is lost
            # by stopping now, and the new version resends what is unacked.
            log.info("the agent's package was upgraded; restarting into the new version")
            self.restart = True
            self.stop.set()
