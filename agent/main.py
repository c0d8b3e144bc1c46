"""``plumb-agent``: enroll this node, run the daemon, run once, show status, audit-lock."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from agent.errors import PlumbAgentError
from agent.state import StateDir

# Exit codes of `run --once`, in the spirit of Puppet's --detailed-exitcodes:
# bits a script can test. 0 means everything is as desired now.
EXIT_OK = 0
EXIT_ERROR = 1  # could not run at all (not enrolled, no catalog, bad usage is 2)
EXIT_DIFFERENCES = 2  # drifted or unknown resources remain (noop or audit)
EXIT_FAILURES = 4  # failed or skipped resources

EPILOG = """\
settings: /etc/plumb/agent.toml (or --config, or $PLUMB_AGENT_CONFIG) holds
state_dir, interval, splay, watch, confirm_timeout, flap_repairs, flap_window,
flap_backoff and log_level; the flags of the same names override it.
$PLUMB_STATE_DIR overrides state_dir.

exit codes: 0 success; 1 error; 2 bad usage.
`run --once` adds: 2 differences remain (drifted/unknown: noop or audit),
4 failures (failed/skipped), 6 both; 0 means every resource is in sync or repaired.

examples:
  plumb-agent enroll --server plumb.example.com:8444 --token-file /root/plumb.token
  printf '%s\\n' plumb1.… | plumb-agent enroll --server plumb.example.com:8444 --token -
  plumb-agent daemon
  plumb-agent run --once --noop
  plumb-agent status --json
  plumb-agent audit-lock on --reason "incident 4711: hands off"
  plumb-agent audit-lock off
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _settle(args)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # APScheduler logs every job at INFO; our own run log says what matters.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        return int(args.func(args))
    except PlumbAgentError as exc:
        print(f"plumb-agent: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name.

    Each command gets a parser of its own: argparse shares option objects
    between a parser and its parents, and the defaults set on the top level
    would otherwise overwrite what was given before the command's name.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="settings file (default: $PLUMB_AGENT_CONFIG or /etc/plumb/agent.toml, if present)",
    )
    common.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="identity, cached catalog and report spool "
        "(default: $PLUMB_STATE_DIR, else the settings file, else /var/lib/plumb)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at DEBUG level"
    )
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plumb-agent",
        description="The Plumb agent: enforces this node's catalog, "
        "repairs drift and reports to the server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(config=None, state_dir=None, verbose=False)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    enroll = sub.add_parser(
        "enroll", parents=[_common()], help="get this node's certificate with a token"
    )
    enroll.add_argument(
        "--server",
        required=True,
        help="HOST:PORT of the server's enrollment listener (default port 8444)",
    )
    token = enroll.add_mutually_exclusive_group(required=True)
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="read the token (from 'plumb token create') from this file, which no other "
        "user may read (chmod 600)",
    )
    token.add_argument(
        "--token",
        metavar="TOKEN",
        help="'-': read the token from standard input; a token given here instead can be "
        "read by every user of this host while enroll runs (a warning says so)",
    )
    enroll.add_argument(
        "--name",
        help="node name (default: this host's fully qualified name, lower-case; "
        "with --replace, the enrolled name)",
    )
    enroll.add_argument(
        "--replace",
        action="store_true",
        help="enroll again although this node is enrolled, with a token from "
        "'plumb node reenroll': a new key, and a new certificate replacing the old one "
        "(restart the agent afterwards)",
    )
    enroll.set_defaults(func=_enroll)

    for name, helptext in (
        ("daemon", "stay connected; apply pushes; run periodically"),
        ("run", "run the catalog now and report"),
    ):
        p = sub.add_parser(name, parents=[_common()], help=helptext)
        p.add_argument(
            "--root",
            type=Path,
            default=Path("/"),
            help="manage paths under this directory instead of / (sandboxing)",
        )
        p.add_argument(
            "--confirm-timeout",
            type=float,
            metavar="SECONDS",
            help="after a risky change (firewall, routes), how long to wait for the server "
            "over a fresh connection before reverting the change (default: 5)",
        )
        p.add_argument(
            "--flap-repairs",
            type=int,
            metavar="N",
            help="a resource repaired more than N times within --flap-window is flapping: "
            "it is reported failed and not repaired for --flap-backoff (default: 5; 0: off)",
        )
        p.add_argument("--flap-window", type=float, metavar="SECONDS", help="(default: 600)")
        p.add_argument("--flap-backoff", type=float, metavar="SECONDS", help="(default: 1800)")
        if name == "daemon":
            p.add_argument(
                "--interval",
                type=float,
                help="seconds between periodic runs (default: 1800)",
            )
            p.add_argument(
                "--splay",
                type=float,
                help="random delay added to each periodic run (default: 60)",
            )
            p.add_argument(
                "--no-watch",
                dest="watch",
                action="store_false",
                default=None,
                help="do not watch managed resources for changes (inotify, ...); "
                "drift is then found by periodic runs only",
            )
            p.set_defaults(func=_daemon)
        else:
            p.add_argument(
                "--once",
                action="store_true",
                required=True,
                help="one run, then exit (required; the daemon runs continuously)",
            )
            p.add_argument(
                "--noop", action="store_true", help="only report what differs; change nothing"
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=10,
                help="seconds to wait for the server (default: %(default)s)",
            )
            p.set_defaults(func=_run_once)

    status = sub.add_parser(
        "status", parents=[_common()], help="enrollment, cached catalog, last run, spool"
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.set_defaults(func=_status)

    lock = sub.add_parser(
        "audit-lock",
        parents=[_common()],
        help="enforce nothing on this host, whatever the server says: on, off, status",
        description="While the audit lock is on, every run (pushes, schedule, watchers, "
        "run --once) only reads and reports: drift is reported drifted and nothing is "
        "changed. A running agent takes it at its next run, and the server shows it "
        "beside the node (plumb nodes: condition audit_lock).",
    )
    actions = lock.add_subparsers(required=True, metavar="ACTION")
    for action, helptext in (
        ("on", "set the lock (kept as it is if it is on already)"),
        ("off", "lift the lock: resources are enforced again as their catalog says"),
        ("status", "show whether the lock is on, since when, by whom and why"),
    ):
        p = actions.add_parser(action, parents=[_common()], help=helptext)
        if action == "on":
            p.add_argument("--reason", default="", metavar="TEXT", help="why, for whoever looks")
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        p.set_defaults(func=_audit_lock, action=action)
    return parser


def _settle(args: argparse.Namespace) -> None:
    """Fill every setting not given as a flag from $PLUMB_STATE_DIR, the settings file, defaults."""
    from agent.config import config_path, load

    path, required = config_path(args.config)
    config = load(path, required=required)
    if args.state_dir is None:
        from_env = os.environ.get("PLUMB_STATE_DIR")
        args.state_dir = Path(from_env) if from_env else config.state_dir
    for name in (
        "interval",
        "splay",
        "watch",
        "confirm_timeout",
        "flap_repairs",
        "flap_window",
        "flap_backoff",
    ):
        if getattr(args, name, None) is None:
            setattr(args, name, getattr(config, name))
    args.log_level = config.log_level


def _enroll(args: argparse.Namespace) -> int:
    from agent.enroll import enroll

    if args.token is not None and args.token != "-":
        from agent.enroll import warn_command_line_token

        warn_command_line_token()
    state = StateDir(args.state_dir)
    try:
        known = state.enrollment()
    except PlumbAgentError:
        known = None
    enrolled = known is not None and state.cert.exists()
    if enrolled and not args.replace:
        assert known is not None
        print(f"already enrolled as {known.node} with {known.server}; nothing to do")
        return 0
    token = _token(args)
    # Resolved only here: getfqdn() may wait on DNS, which no other command needs.
    name = args.name or (known.node if enrolled and known else socket.getfqdn().lower())
    result = enroll(state, args.server, token, name, replace=args.replace)
    print(
        f"enrolled as {result.node}; agent service at {result.server}; "
        f"labels: {', '.join(f'{k}={v}' for k, v in sorted(result.labels.items())) or '-'}"
    )
    return 0


def _token(args: argparse.Namespace) -> str:
    """The token, from --token-file, standard input (--token -) or --token itself."""
    from agent.enroll import read_token_file, read_token_stream

    if args.token_file is not None:
        return read_token_file(args.token_file)
    if args.token == "-":
        return read_token_stream(sys.stdin)
    return str(args.token)


def _daemon(args: argparse.Namespace) -> int:
    from agent.daemon import Daemon

    daemon = Daemon(
        StateDir(args.state_dir),
        args.root,
        args.interval,
        args.splay,
        watch=args.watch,
        confirm_timeout_s=args.confirm_timeout,
        flap_policy=_flap_policy(args),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop.set())
    daemon.serve()
    if daemon.restart:
        # The same command line, interpreter flags included, now running the
        # upgraded code. Logs and stdio are flushed; every other descriptor
        # Python opened is close-on-exec.
        logging.shutdown()
        sys.stdout.flush()
        os.execv(sys.executable, sys.orig_argv)
    return 0


def _run_once(args: argparse.Namespace) -> int:
    from agent.once import run_once

    report = run_once(
        StateDir(args.state_dir),
        args.root,
        args.noop,
        args.timeout,
        args.confirm_timeout,
        flap_policy=_flap_policy(args),
    )
    return _exit_code(report)


def _flap_policy(args: argparse.Namespace) -> Any:
    from agent.flapping import FlapPolicy

    return FlapPolicy(args.flap_repairs, args.flap_window, args.flap_backoff)


def _exit_code(report: Any) -> int:
    from modules.base import Status

    statuses = report.statuses()
    code = EXIT_OK
    if statuses & {Status.DRIFTED, Status.UNKNOWN}:
        code |= EXIT_DIFFERENCES
    if statuses & {Status.FAILED, Status.SKIPPED}:
        code |= EXIT_FAILURES
    return code


def _audit_lock(args: argparse.Namespace) -> int:
    """``audit-lock on|off|status``: the lock file in the state dir (agent/auditlock.py)."""
    state = StateDir(args.state_dir)
    act = {"on": _lock_on, "off": _lock_off, "status": _lock_shown}[args.action]
    lock, changed, said, problem = act(state, args)
    if args.json:
        record = lock.to_json() if lock is not None else dict.fromkeys(("uid", "since", "reason"))
        body = {
            "locked": lock is not None,
            **record,
            "path": str(state.audit_lock),
            "changed": changed,
            "problem": problem,
        }
        print(json.dumps(body, indent=2, sort_keys=True))
    else:
        print(said)
    if problem is not None:
        print(
            f"plumb-agent: {problem}; it locks nothing ('audit-lock off' removes it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


# What an audit-lock action leaves: the lock in force, whether it changed,
# the sentence to print, and what is wrong at the lock's path (None: nothing).
_LockOutcome = tuple[Any, bool, str, str | None]


def _lock_on(state: StateDir, args: argparse.Namespace) -> _LockOutcome:
    from agent import auditlock

    lock, changed = auditlock.turn_on(state, args.reason)
    said = lock.detail() if changed else f"audit lock already {lock.describe()}; kept as it is"
    return lock, changed, said, None


def _lock_off(state: StateDir, args: argparse.Namespace) -> _LockOutcome:
    from agent import auditlock

    was = auditlock.turn_off(state)
    if was is None:
        return None, False, "audit lock was not on; nothing to do", None
    said = f"audit lock off (it was {was.describe()}): enforced again from the next run"
    return None, True, said, None


def _lock_shown(state: StateDir, args: argparse.Namespace) -> _LockOutcome:
    from agent import auditlock
    from agent.errors import UntrustedLock

    try:
        lock = auditlock.read(state.audit_lock)
    except UntrustedLock as exc:
        return None, False, "audit lock off: resources are enforced", str(exc)
    if lock is None:
        return None, False, "audit lock off: resources are enforced", None
    return lock, False, lock.detail(), None


def _status(args: argparse.Namespace) -> int:
    """What this agent has, read without changing anything: damaged state is shown, not repaired."""
    from agent import spool
    from agent.cache import CatalogCache
    from agent.losses import LossLog, describe

    state = StateDir(args.state_dir)
    enrollment = state.enrollment()
    losses = LossLog(state)
    cache = CatalogCache(state, enrollment.node, losses).status()
    spooled, spool_problem, set_aside = spool.inspect(state.spool)
    last = state.read_json(state.last_run)
    lock = _lock_status(state)
    info = {
        "node": enrollment.node,
        "server": enrollment.server,
        "labels": enrollment.labels,
        "catalog_revision": cache.revision,
        "catalog_problem": cache.problem,
        "spooled_reports": spooled,
        "spool_problem": spool_problem,
        "rejected_reports": set_aside,
        "clock": state.read_json(state.clock),
        "last_run": last if isinstance(last, dict) else None,
        "audit_lock": lock.to_json() if lock is not None else None,
        "losses": [
            {
                "what": x.what,
                "count": None if x.count < 0 else x.count,
                "at": x.at,
                "detail": x.detail,
                "reported": x.recorded,
            }
            for x in losses.recent()
        ],
    }
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    catalog = str(cache.revision) if cache.revision else "none yet"
    if not cache.revision and cache.problem:
        catalog = f"none ({cache.problem})"
    print(
        f"node:              {info['node']}\nserver:            {info['server']}\n"
        f"catalog revision:  {catalog}\n"
        f"spooled reports:   {spooled if spool_problem is None else spool_problem}"
    )
    if set_aside:
        print(
            f"set aside:         {set_aside} report(s) no server takes "
            f"(kept in {state.spool}, table rejected)"
        )
    clock = info["clock"]
    if isinstance(clock, dict) and isinstance(clock.get("offset_s"), (int, float)):
        offset = clock["offset_s"]
        note = "" if abs(offset) <= 60 else "  (check NTP: reports are ordered by sequence)"
        print(f"clock:             {offset:+.1f} s from the server's{note}")
    print(f"last run:          {_last_run(info['last_run'])}")
    if lock is not None:
        print(f"audit lock:        {lock.describe()}: nothing is enforced")
    for x in losses.recent():
        told = "reported to the server" if x.recorded else "not reported to the server yet"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x.at))
        print(f"lost:              {describe(x.what, x.count)} at {when} ({x.detail}; {told})")
    return 0


def _lock_status(state: StateDir) -> Any:
    """The audit lock in force, for ``status``; None if off (or what is there is not one)."""
    from agent import auditlock

    try:
        return auditlock.read(state.audit_lock)
    except PlumbAgentError:
        return None  # `audit-lock status` says why


def _last_run(last: Any) -> str:
    """The last run in one line; "never", or what is wrong with last_run.json."""
    if not last:
        return "never"
    try:
        counts = ", ".join(f"{k} {v}" for k, v in last["summary"].items() if v)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["finished_at"]))
        noop = ", noop" if last["noop"] else ""
        return f"{when} ({last['trigger']}{noop}): {counts or 'no resources'}"
    except (KeyError, TypeError, ValueError, AttributeError):
        return "unknown (last_run.json is not a run summary)"


def run() -> NoReturn:
    """The command as a program: main(), then out without the interpreter's teardown.

    gRPC leaves daemon threads behind (a stream's request consumer, the
    channel's poller). The interpreter stops them wherever they are at exit;
    one stopped while holding a call's lock makes finalising that call wait
    for ever, and the process never ends (seen: about one `run --once` in a
    hundred under load). Everything worth keeping is on disk already (the
    spool commits, state files are written atomically); stdio and logs are
    flushed here.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
