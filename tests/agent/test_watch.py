"""The agent's watchers: restart per catalog, debounce, and never a run for its own echo.

A fake ``probe`` kind keeps its "system" in a dict; its watch blocks until
stopped and lets the test fire on_change as an inotify event would.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.engine import ResourceResult
from agent.report import RunReport, Trigger
from agent.watch import Watchers, expected_after, targets
from modules.base import Change, Context, Identity, Kind, Status, Watchable
from modules.catalog import Catalog, CatalogResource
from modules.errors import ReadError, SpecError

QUIET_S = 0.05
MAX_DELAY_S = 0.3
RESTART_S = (0.05, 0.2)


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    key: str
    value: str


class Plain(Kind[ProbeSpec, "str | None"]):
    """A kind whose system is a dict, and that cannot be watched."""

    name = "plain"

    def __init__(self) -> None:
        self.system: dict[str, str] = {}
        self.active: list[tuple[str, ...]] = []  # the keys of each running watch
        self._cond = threading.Condition()
        self._on_change: Callable[[], None] | None = None
        self.ctx: Context | None = None  # the running watch's

    def parse(self, raw: Mapping[str, Any]) -> ProbeSpec:
        if "value" not in raw:
            raise SpecError("value", "required")
        return ProbeSpec(str(raw["key"]), str(raw["value"]))

    def identities(self, spec: ProbeSpec) -> tuple[Identity, ...]:
        return (Identity("probe key", spec.key),)

    def read(self, ctx: Context, spec: ProbeSpec) -> str | None:
        return self.system.get(spec.key)

    def diff(self, spec: ProbeSpec, state: str | None) -> list[Change]:
        return [] if state == spec.value else [Change("value", str(state), spec.value)]

    def apply(
        self, ctx: Context, spec: ProbeSpec, state: str | None, changes: list[Change]
    ) -> None:
        self.system[spec.key] = spec.value


class Probe(Plain, Watchable[ProbeSpec]):
    """The same, and watchable: tests fire its watch's on_change by hand."""

    name = "probe"

    def watch(
        self,
        ctx: Context,
        specs: Any,
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        keys = tuple(spec.key for spec in specs)
        with self._cond:
            self.active.append(keys)
            self._on_change = on_change
            self.ctx = ctx
            self._cond.notify_all()
        try:
            stop.wait()
        finally:
            with self._cond:
                self.active.remove(keys)
                self._cond.notify_all()

    def fire(self) -> None:
        assert self._on_change is not None, "no watch is running"
        self._on_change()

    def degrade(self, sentence: str | None) -> None:
        """Say what the running watch polls, as watch_paths would."""
        assert self.ctx is not None, "no watch is running"
        self.ctx.watch_degraded(sentence)

    def wait_another_watch(self, than: Context) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.ctx is not than, 5)

    def wait_active(self, expected: list[tuple[str, ...]]) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: sorted(self.active) == expected, 5)


class Broken(Probe):
    name = "broken"

    def watch(self, *args: Any) -> None:
        raise OSError("no inotify here")


class Flaky(Probe):
    """Watchable, but its first two watches fail at once (nft monitor killed, D-Bus gone)."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.failures = 2

    def watch(
        self, ctx: Context, specs: Any, on_change: Callable[[], None], stop: threading.Event
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("nft monitor stopped (exit status -9)")
        super().watch(ctx, specs, on_change, stop)


class Hanging(Probe):
    """Watchable, and its read runs a real command that hangs."""

    name = "hanging"
    timeout_s = 0.3

    def read(self, ctx: Context, spec: ProbeSpec) -> str | None:
        ctx.run(["sleep", "30"], failure=ReadError)
        return None


class Requests:
    """The daemon's side: counts the runs the watchers ask for."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.times) >= count, timeout)


def result(rid: str, status: Status, *changes: Change) -> ResourceResult:
    kind, name = rid.split("/", 1)
    return ResourceResult(rid, kind, name, "m", status, changes)


def report(trigger: Trigger, results: list[ResourceResult], revision: int = 1) -> RunReport:
    return RunReport("r", "node", revision, False, trigger, 1.0, 2.0, tuple(results))


@dataclasses.dataclass
class Setup:
    probe: Probe
    watchers: Watchers
    requests: Requests
    caplog: pytest.LogCaptureFixture

    def run(self, trigger: Trigger = Trigger.PUSH, revision: int = 1, **keep: str) -> None:
        """A run of the catalog: converge (each apply echoing back), then report.

        ``keep`` names keys the run leaves alone and the status it reports for them.
        """
        self.watchers.run_started()
        results = []
        for key, value in WANTED.items():
            status = keep.get(key, "")
            if not status:
                self.probe.system[key] = value
                self.probe.fire()  # the echo of our own apply
            changes = [] if not status else [self.change(key)]
            results.append(result(f"probe/{key}", Status(status or "repaired"), *changes))
        self.watchers.run_finished(report(trigger, results, revision))

    def change(self, key: str) -> Change:
        return Change("value", str(self.probe.system.get(key)), WANTED[key])

    def checked(self, times: int = 1) -> bool:
        """Wait until a check has found nothing to run for, ``times`` times in all."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.caplog.text.count("nothing changed") >= times:
                return True
            time.sleep(0.01)
        return False


WANTED = {"a": "1", "b": "2"}


def catalog(revision: int = 1, **extra: Mapping[str, Any]) -> Catalog:
    resources = [
        CatalogResource("probe", key, {"key": key, "value": value}) for key, value in WANTED.items()
    ]
    resources += [CatalogResource(raw["kind"], name, raw["spec"]) for name, raw in extra.items()]
    return Catalog("node", revision, tuple(resources))


@pytest.fixture
def setup(caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> Iterator[Setup]:
    caplog.set_level(logging.DEBUG, logger="plumb.agent.watch")
    # parametrize("setup", ["flaky"], indirect=True): a probe whose first watches fail.
    probe = Flaky() if getattr(request, "param", "") == "flaky" else Probe()
    kinds = {"probe": probe, "plain": Plain(), "broken": Broken(), "hanging": Hanging()}
    requests = Requests()
    watchers = Watchers(
        Path("/nonexistent"),
        requests,
        kinds=lambda name: kinds[name],
        quiet_s=QUIET_S,
        max_delay_s=MAX_DELAY_S,
        restart_s=RESTART_S,
    )
    yield Setup(probe, watchers, requests, caplog)
    watchers.stop()


def started(setup: Setup) -> Setup:
    """Watching the catalog, after its first run converged everything."""
    setup.watchers.start(catalog())
    assert setup.probe.wait_active([("a", "b")])
    setup.run()
    assert setup.checked()  # the echoes of that run, answered by one check
    return setup


# --- which resources, and restarting ----------------------------------------------


def test_targets_are_the_watchable_resources_that_parse() -> None:
    probe = Probe()
    kinds: dict[str, Kind[Any, Any]] = {"probe": probe, "plain": Plain()}

    def lookup(name: str) -> Kind[Any, Any]:
        if name not in kinds:
            raise SpecError("kind", f"unknown kind {name!r}")
        return kinds[name]

    found = targets(
        catalog(
            p={"kind": "plain", "spec": {"key": "p", "value": "x"}},
            bad={"kind": "probe", "spec": {"key": "bad"}},
            odd={"kind": "no-such-kind", "spec": {}},
        ),
        lookup,
    )
    assert [(t.id, t.spec) for t in found] == [
        ("probe/a", ProbeSpec("a", "1")),
        ("probe/b", ProbeSpec("b", "2")),
    ]


def test_a_new_catalog_restarts_the_watchers_and_stop_ends_them(setup: Setup) -> None:
    setup.watchers.start(catalog(p={"kind": "plain", "spec": {"key": "p", "value": "x"}}))
    assert setup.probe.wait_active([("a", "b")])  # nothing for the plain kind

    second = Catalog("node", 2, (CatalogResource("probe", "x", {"key": "x", "value": "9"}),))
    setup.watchers.start(second)
    assert setup.probe.wait_active([("x",)])

    setup.watchers.stop()
    assert setup.probe.wait_active([])
    alive = [t.name for t in threading.enumerate() if t.name.startswith("plumb-watch")]
    assert alive == []


def test_a_watcher_that_fails_is_logged_and_the_rest_keep_watching(setup: Setup) -> None:
    setup.watchers.start(catalog(k={"kind": "broken", "spec": {"key": "k", "value": "1"}}))
    assert setup.probe.wait_active([("a", "b")])
    deadline = time.monotonic() + 5
    while "watcher of kind 'broken' stopped" not in setup.caplog.text:
        assert time.monotonic() < deadline, "the failure was not logged"
        time.sleep(0.01)


def logged(setup: Setup, text: str, times: int = 1) -> bool:
    deadline = time.monotonic() + 5
    while setup.caplog.text.count(text) < times:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("setup", ["flaky"], indirect=True)
def test_a_watcher_that_fails_is_started_again_and_checks_what_it_missed(setup: Setup) -> None:
    started(setup)  # the watch failed twice before it held; the check after each restart
    assert logged(setup, "watcher of kind 'probe' stopped (OSError: nft monitor stopped", 2)
    assert "watching again in 0.05 s" in setup.caplog.text
    assert "watching again in 0.1 s" in setup.caplog.text  # backing off
    setup.probe.system["a"] = "tampered"
    setup.probe.fire()
    assert setup.requests.wait(1)


def test_a_watcher_that_keeps_failing_keeps_being_started_again(setup: Setup) -> None:
    setup.watchers.start(catalog(k={"kind": "broken", "spec": {"key": "k", "value": "1"}}))
    assert logged(setup, "watcher of kind 'broken' stopped", 4)
    assert "watching again in 0.2 s" in setup.caplog.text  # at the cap


def test_a_check_that_hangs_is_cut_short_and_asks_for_a_run(setup: Setup) -> None:
    setup.watchers.start(catalog(h={"kind": "hanging", "spec": {"key": "h", "value": "1"}}))
    assert setup.probe.wait_active([("a", "b")])
    setup.run()
    fired = time.monotonic()
    setup.watchers.on_change()
    assert setup.requests.wait(1)
    assert time.monotonic() - fired < Hanging.timeout_s + 2.0
    assert logged(setup, "checking probe/a failed") or logged(setup, "checking hanging/h failed")
    assert "timed out after 0.3 s" in setup.caplog.text


def test_the_debouncer_survives_a_failed_request_for_a_run(setup: Setup) -> None:
    started(setup)
    calls: list[int] = []

    def refuse() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("scheduler is shut down")
        setup.requests()

    setup.watchers._request_run = refuse
    setup.probe.system["a"] = "tampered"
    setup.probe.fire()
    assert logged(setup, "checking after events failed; carrying on")
    setup.probe.fire()
    assert setup.requests.wait(1)


# --- saying what watchers poll -------------------------------------------------------

POLLING = "polling /etc/a every 2 s: inotify would not take a watch (No space left on device)"


def polling(setup: Setup) -> list[tuple[str, str]]:
    return [(c.name, c.detail) for c in setup.watchers.conditions()]


def test_a_watcher_that_polls_is_a_condition_until_it_says_otherwise(setup: Setup) -> None:
    started(setup)
    assert polling(setup) == []
    setup.probe.degrade(POLLING)
    assert polling(setup) == [("watch_polling", f"probe: {POLLING}")]
    assert f"watcher of kind 'probe' is {POLLING}" in setup.caplog.text
    assert [r.levelname for r in setup.caplog.records if POLLING in r.getMessage()] == ["WARNING"]

    setup.probe.degrade(None)
    assert polling(setup) == []
    assert "watcher of kind 'probe' watches everything again" in setup.caplog.text


def test_what_a_watcher_said_ends_with_it(setup: Setup) -> None:
    started(setup)
    setup.probe.degrade(POLLING)
    old = setup.probe.ctx
    assert old is not None

    setup.watchers.start(catalog(revision=2))  # a new catalog: new watchers
    assert polling(setup) == []
    old.watch_degraded("polling /etc/b every 2 s: said on its way out")
    assert polling(setup) == []  # a stopped watcher no longer speaks for the node
    assert setup.probe.wait_another_watch(than=old)
    setup.probe.degrade(POLLING)  # the new watcher speaks for itself
    assert polling(setup) == [("watch_polling", f"probe: {POLLING}")]

    setup.watchers.stop()
    assert polling(setup) == []


# --- debounce ---------------------------------------------------------------------


def test_a_burst_of_events_makes_one_run_once_quiet(setup: Setup) -> None:
    started(setup)
    setup.probe.system["a"] = "tampered"
    for _ in range(20):
        setup.probe.fire()
    last = time.monotonic()
    assert setup.requests.wait(1)
    assert setup.requests.times[0] - last >= QUIET_S * 0.9
    # Until the run it asked for starts, further events ask for nothing more
    # (given ample time to: this waits for an absence, not for a condition).
    setup.probe.fire()
    assert not setup.requests.wait(2, timeout=QUIET_S * 6)
    setup.run(trigger=Trigger.WATCH)
    assert setup.checked(2)
    assert len(setup.requests.times) == 1


def test_steady_events_run_within_the_maximum_delay(setup: Setup) -> None:
    started(setup)
    setup.probe.system["b"] = "tampered"
    fired = [time.monotonic()]
    setup.probe.fire()
    while not setup.requests.wait(1, timeout=0.01):  # never quiet for QUIET_S
        setup.probe.fire()
        fired.append(time.monotonic())
        assert fired[-1] - fired[0] < 5, "no run was asked for"
    delay = setup.requests.times[0] - fired[0]
    assert delay < MAX_DELAY_S + 1.0
    # On a loaded machine this thread may have stalled long enough to look
    # quiet; only when it did not is the request's earliest time known.
    gaps = [b - a for a, b in zip(fired, [*fired[1:], setup.requests.times[0]], strict=True)]
    if max(gaps) < QUIET_S * 0.9:
        assert delay >= MAX_DELAY_S * 0.9


# --- own applies, and what the last run left ---------------------------------------


def test_the_echo_of_our_own_run_runs_nothing(setup: Setup) -> None:
    started(setup)  # its echoes were checked: nothing changed
    setup.run(trigger=Trigger.WATCH)  # and a run caused by events, likewise
    assert setup.checked(2)
    assert setup.requests.times == []


def test_a_change_during_a_run_is_checked_when_it_ends(setup: Setup) -> None:
    started(setup)
    setup.watchers.run_started()
    setup.probe.system["a"] = "tampered after the run read it"
    setup.probe.fire()
    in_sync = [result(f"probe/{k}", Status.IN_SYNC) for k in WANTED]
    setup.watchers.run_finished(report(Trigger.SCHEDULE, in_sync))
    assert setup.requests.wait(1)


def test_a_drifted_audit_resource_runs_again_only_when_it_changes_again(setup: Setup) -> None:
    setup.watchers.start(catalog())
    assert setup.probe.wait_active([("a", "b")])
    setup.probe.system["a"] = "audited"
    setup.run(a="drifted")  # reported, left as it is
    assert setup.checked()  # the echo of b's apply: a differs, but as it did
    assert setup.requests.times == []

    setup.probe.system["a"] = "audited, and changed again"
    setup.probe.fire()
    assert setup.requests.wait(1)


def test_a_failure_is_retried_on_the_next_event_once(setup: Setup) -> None:
    setup.watchers.start(catalog())
    assert setup.probe.wait_active([("a", "b")])
    setup.run(a="failed")  # a push run: the cause may be fixed by hand next
    assert setup.requests.wait(1)

    setup.run(trigger=Trigger.WATCH, a="failed")  # failed again, in a run events caused
    assert setup.checked()
    assert len(setup.requests.times) == 1


def test_a_failure_in_a_run_events_caused_does_not_make_the_watcher_deaf(setup: Setup) -> None:
    """The package watcher once missed every later removal of a package whose repair
    failed in a run its events caused, even after a manual run repaired it."""
    setup.watchers.start(catalog())
    assert setup.probe.wait_active([("a", "b")])
    setup.run(trigger=Trigger.WATCH, a="failed")  # "dpkg frontend lock was locked"
    assert setup.checked()  # the echo of b's apply: a differs exactly as the run found
    assert setup.requests.times == []

    setup.probe.system["a"] = "1"  # repaired by a run the daemon did not make
    setup.probe.fire()
    assert setup.requests.wait(1)
    setup.run(trigger=Trigger.WATCH)
    assert setup.checked(2)

    setup.probe.system["a"] = "removed again"
    setup.probe.fire()
    assert setup.requests.wait(2)


def test_a_transient_failure_in_a_run_events_caused_is_retried_on_the_next_event(
    setup: Setup,
) -> None:
    setup.watchers.start(catalog())
    assert setup.probe.wait_active([("a", "b")])
    setup.probe.system["b"] = "2"
    setup.watchers.run_started()
    busy = dataclasses.replace(result("probe/a", Status.FAILED, setup.change("a")), transient=True)
    setup.watchers.run_finished(report(Trigger.WATCH, [busy, result("probe/b", Status.IN_SYNC)]))
    setup.probe.fire()  # the package manager's database, as the lock holder finishes
    assert setup.requests.wait(1)


def test_expected_after_a_report() -> None:
    results = [
        result("k/sync", Status.IN_SYNC),
        result("k/fixed", Status.REPAIRED),
        result("k/audit", Status.DRIFTED, Change("mode", "0644", "0600")),
        result("k/failed", Status.FAILED),
        result("k/skipped", Status.SKIPPED),
    ]
    assert expected_after(report(Trigger.PUSH, results)) == {
        "k/sync": (),
        "k/fixed": (),
        "k/audit": (Change("mode", "0644", "0600"),),
        "k/failed": "retry",
        "k/skipped": "ignore",
    }
    # In a run events caused: the differences it found, as for a drifted one.
    failed = result("k/failed", Status.FAILED, Change("state", "absent", "present"))
    assert expected_after(report(Trigger.WATCH, [failed])) == {
        "k/failed": (Change("state", "absent", "present"),)
    }
    # Unless the kind called the failure transient: then the next event retries it.
    busy = dataclasses.replace(failed, transient=True)
    assert expected_after(report(Trigger.WATCH, [busy])) == {"k/failed": "retry"}
