"""`plumb-agent run --once`: catch up with the server if it answers, run, deliver reports.

The server being unreachable is not an error: the cached catalog is run and
the report waits in the spool for the next connection.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent import AGENT_VERSION, facts
from agent.cache import CatalogCache
from agent.errors import NoCatalog
from agent.flapping import FlapPolicy
from agent.losses import LossLog
from agent.report import RunReport, Trigger, run_summary
from agent.runner import DEFAULT_CONFIRM_TIMEOUT_S, Runner
from agent.session import SessionClient
from agent.spool import Spool
from agent.state import StateDir

log = logging.getLogger("plumb.agent")


def run_once(
    state: StateDir,
    root: Path,
    noop: bool,
    timeout: float,
    confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S,
    flap_policy: FlapPolicy | None = None,
) -> RunReport:
    enrollment = state.enrollment()
    losses = LossLog(state)
    cache = CatalogCache(state, enrollment.node, losses)
    spool = Spool(state.spool, losses, state.unwritable)
    runner = Runner(state, cache, spool, root, enrollment.server, confirm_timeout_s, flap_policy)
    session = SessionClient(
        state,
        enrollment,
        cache,
        spool,
        facts.gather(AGENT_VERSION),
        on_catalog=lambda _: None,
        # The hello says whether the audit lock is on, as the daemon's does.
        conditions=lambda: sorted(
            [*state.conditions.current(), *runner.audit_lock.conditions()], key=lambda c: c.name
        ),
    )
    session.start()
    try:
        # Until caught up, or the stream ended (refused in 10 ms: no need to
        # wait the whole timeout for a server that is not there).
        if not session.settled.wait(timeout):
            log.warning(
                "server %s did not answer within %ss; running the cached catalog",
                enrollment.server,
                timeout,
            )
        elif session.ended.is_set() and not session.caught_up.is_set():
            log.warning(
                "no session with server %s (%s); running the cached catalog",
                enrollment.server,
                session.error or "closed",
            )
        report = runner.run(Trigger.MANUAL, noop=noop)
        if report is None:
            why = (
                f"the session with the server ended: {session.error}"
                if session.error
                else "the server has nothing for this node"
            )
            raise NoCatalog(f"no catalog yet, and nothing is cached: {why}")
        print(run_summary(report))
        session.flush()
        if not session.wait_acked(timeout):
            log.warning(
                "%d report(s) stay spooled until the server acknowledges them", spool.count()
            )
        spool.catch_up()
        if spool.in_memory():
            log.error(
                "%d report(s) could not be spooled (state dir %s takes no writes) nor "
                "delivered: they are lost when this run ends",
                spool.in_memory(),
                state.path,
            )
        return report
    finally:
        session.close()
