"""``plumb``: the operator's command line (talks to the Admin service over mutual TLS)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from protos.limits import MAX_PUSH_BYTES
from server import cliviews, export, operators, tokens
from server import plan as plan_
from server.errors import CLIError, PlumbServerError
from server.pki import (
    finish_replace,
    generate_key,
    key_pem,
    renew_within,
    replace_pair,
    write_private,
)

N = TypeVar("N", int, float)
R = TypeVar("R")

DEFAULT_CONFIG = Path("~/.config/plumb/cli.toml").expanduser()

EPILOG = """\
configuration: --config, else $PLUMB_CONFIG, else ~/.config/plumb/cli.toml
(written by 'plumb operator add' or 'plumb-server operator add' into the
directory given with --out, and for the first admin by 'plumb-server init'
under <data-dir>/operator/cli.toml; paths in it are relative to it).

roles: viewer reads; operator also pushes; admin also manages tokens, nodes
and operators. A command beyond the caller's role is refused, saying so.

exit codes: 0 success; 1 error or refused push; 2 bad usage;
            3 (compliance) the fleet is not fully compliant.

examples:
  plumb token create --labels role=web --ttl 3600 --uses 5
  plumb token create --labels role=web --install-command   # one line to paste on the node
  plumb token create --names db-2 --install-command         # for that name only
  plumb token list --all
  plumb node reenroll db-2                                  # a new host for an old name
  plumb plan manifests/web.yaml                            # a dry run on the nodes
  plumb push manifests/web.yaml manifests/base.yaml -m "web: nginx 1.24"
  plumb manifests
  plumb history web
  plumb diff 4                     # revision 4 -> the latest
  plumb rollback web --to 4 -m "back to nginx 1.22"
  plumb manifest rm old-app --purge
  plumb push web.yaml --canary 1 --batch 25% --max-failures 2 --pause-after-canary
  plumb rollout status
  plumb rollout resume             # or: abort, rollback
  plumb label web-1 role=web env=staging --remove canary
  plumb nodes
  plumb nodes --target 'role=web,os.family=debian'
  plumb node revoke web-1      # it can no longer connect; listed as revoked
  plumb node rm web-1          # decommission: revoke, and drop it from nodes/compliance
  plumb report web-1
  plumb runs web-1 --since 1d
  plumb report web-1 --run 3f2a9c...   # any run, by the id 'runs' shows
  plumb drift --node web-1
  plumb compliance --json
  plumb waiver add --control CIS-1.1.1 --target 'role=legacy' --reason "..." --expires 30d
  plumb operator add alice --role operator --out ./alice   # her key is made here
  plumb operator revoke alice
  plumb audit --since 1d
  plumb audit --verify
"""


@dataclasses.dataclass(frozen=True)
class CLIConfig:
    server: str
    ca: Path
    cert: Path
    key: Path


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(f"plumb: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"plumb: the server refused or failed: {_rpc_message(exc)}", file=sys.stderr)
        return 1


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (plumb nodes --config F).

    Each command gets a parser of its own: argparse shares option objects
    between a parser and its parents, and the defaults set on the top level
    would otherwise overwrite what was given before the command's name.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="CLI config file (see below)"
    )
    common.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        help="HOST:PORT of the server (default: $PLUMB_SERVER, else the config)",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plumb",
        description="Operate a Plumb fleet: enroll nodes, push manifests, "
        "read drift and compliance.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(config=None, server=os.environ.get("PLUMB_SERVER"))
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    _add_token_commands(sub)

    push = sub.add_parser(
        "push",
        parents=[_common()],
        help="validate manifests and roll them out as a new revision",
        description="Validate the manifests (with those already stored) and store a new "
        "revision; connected nodes whose catalog changes get it at once. Pushing manifests "
        "identical to the latest revision stores nothing. Exit 1 if refused.",
    )
    push.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _revision_flags(push)
    push.add_argument(
        "--plan-first",
        action="store_true",
        help="show the plan (see 'plumb plan') and push only if you answer yes",
    )
    _staged_flags(push)
    _json_flag(push)
    push.set_defaults(func=_push)

    plan = sub.add_parser(
        "plan",
        parents=[_common()],
        help="what pushing manifests would change, node by node: a dry run, nothing changed",
        description="Validate and compile the manifests as a push would, send each selected "
        "connected node its candidate catalog as a dry run, and show what a push would "
        "change: per resource, on how many nodes and which fields; then per node, each "
        "field observed -> desired (with a diff for small text files). Nodes that did not "
        "answer in time and nodes that are offline are listed. Nothing is stored and no "
        "agent changes anything. A resource whose outcome depends on an earlier change is "
        "'unknown', never 'no change'. Without FILE: the latest revision as it stands "
        "(what a run would repair now). Exit 1 if the manifests would be refused.",
    )
    plan.add_argument("files", nargs="*", type=Path, metavar="FILE")
    plan.add_argument(
        "--target", metavar="SELECTOR", default="", help="only the nodes a selector picks"
    )
    _wait_flag(plan, 10.0, "the nodes' answers")
    _json_flag(plan)
    plan.set_defaults(func=_plan)
    _add_revision_commands(sub)

    nodes = sub.add_parser(
        "nodes", parents=[_common()], help="enrolled nodes, connection and compliance"
    )
    nodes.add_argument(
        "--all", action="store_true", help="also the nodes removed with 'plumb node rm'"
    )
    nodes.add_argument(
        "--target",
        metavar="SELECTOR",
        default="",
        help="only the nodes a selector picks: 'role=web,os.family=debian', "
        "'name in (db-1,db-2)', 'env!=prod', '!canary' (see 'plumb manifests')",
    )
    _json_flag(nodes)
    nodes.set_defaults(func=_nodes)

    _node_parser(sub)

    report = sub.add_parser(
        "report",
        parents=[_common()],
        help="a node's last run (or any): status and diff per resource",
    )
    report.add_argument("node")
    report.add_argument(
        "--run", metavar="ID", default="", help="this run ('plumb runs NODE' lists them)"
    )
    _json_flag(report)
    report.set_defaults(func=_report)

    runs = sub.add_parser(
        "runs",
        parents=[_common()],
        help="a node's run history, newest first: trigger, revision, count per status",
    )
    runs.add_argument("node", metavar="NODE")
    runs.add_argument(
        "--since",
        type=_since,
        metavar="T",
        help="only runs finished from T on: a time (2026-12-01 10:00, local) or an age (2h, 7d)",
    )
    runs.add_argument(
        "--limit",
        type=_bounded(int, 1, MAX_RUNS_LIMIT, "a number of runs"),
        default=50,
        help=f"at most this many, up to {MAX_RUNS_LIMIT} (default: 50)",
    )
    _json_flag(runs)
    runs.set_defaults(func=_runs)

    drift = sub.add_parser(
        "drift", parents=[_common()], help="drift events across the fleet, newest first"
    )
    drift.add_argument("--node", default="", help="only this node")
    drift.add_argument(
        "--kind", default="", help="only resources of this kind (file, service, ...)"
    )
    drift.add_argument("--manifest", default="", help="only this manifest's resources")
    drift.add_argument("--control", default="", help="only resources tagged with this control")
    drift.add_argument(
        "--since",
        type=_since,
        metavar="T",
        help="only events detected from T on: a time (2026-12-01 10:00) or an age (24h, 7d)",
    )
    drift.add_argument(
        "--unrepaired",
        action="store_true",
        help="only what was not repaired (drift in audit mode, failed repairs)",
    )
    drift.add_argument(
        "--limit",
        type=_bounded(int, 1, MAX_DRIFT_LIMIT, "a number of events"),
        default=50,
        help=f"at most this many, up to {MAX_DRIFT_LIMIT} (default: 50)",
    )
    _json_flag(drift)
    drift.set_defaults(func=_drift)

    compliance = sub.add_parser(
        "compliance", parents=[_common()], help="compliance per node, manifest, control"
    )
    compliance.add_argument(
        "--by", choices=["node", "manifest", "control", "kind"], help="only rows of this scope"
    )
    compliance.add_argument(
        "--target", metavar="SELECTOR", default="", help="only the nodes a selector picks"
    )
    compliance.add_argument(
        "--format",
        choices=["table", "json", "csv", "html", "junit"],
        default="table",
        help="table (default); json (as --json); csv; html: one self-contained evidence page "
        "(summary, compliance by control as a chart, worst nodes, drift timeline, and what "
        "produced it); junit: a test suite per control",
    )
    _json_flag(compliance)
    compliance.set_defaults(func=_compliance)
    _add_rollout_commands(sub)
    _add_waiver_commands(sub)
    _add_operator_commands(sub)
    _add_audit_command(sub)
    return parser


def _staged_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a staged rollout (push, rollback)."""
    staged = parser.add_argument_group(
        "staged rollout",
        "Hand the revision to the nodes whose catalog it changes batch by batch: the canary "
        "first, then --batch at a time, each batch done when its nodes reported the revision "
        "(or --batch-timeout passed). A node fails when its run has failed resources (a "
        "change reverted by confirm-or-revert is one), it disconnects during its batch or "
        "does not report in time. More than --max-failures failures halt it: nodes not "
        "reached keep the previous revision. 'plumb rollout' shows and steers it.",
    )
    staged.add_argument("--canary", metavar="N|N%", help="the first batch (default: none)")
    staged.add_argument(
        "--batch", metavar="N|N%", help="nodes per batch after it (default: all the rest)"
    )
    staged.add_argument(
        "--max-failures", metavar="N|N%", help="failures allowed before it halts (default: 0)"
    )
    staged.add_argument(
        "--batch-timeout",
        type=_bounded(float, 1.0, 86400.0, "a number of seconds"),
        metavar="SECONDS",
        help="how long a batch's nodes have to report (default: 300)",
    )
    staged.add_argument(
        "--pause-after-canary",
        action="store_true",
        help="wait for 'plumb rollout resume' after the canary batch",
    )


def _rollout_settings(args: argparse.Namespace) -> pb.RolloutSettings | None:
    """The staged rollout the flags ask for; None: every node at once."""
    given = (args.canary, args.batch, args.max_failures, args.batch_timeout)
    if all(x is None for x in given) and not args.pause_after_canary:
        return None
    return pb.RolloutSettings(
        canary=args.canary or "",
        batch=args.batch or "",
        max_failures=args.max_failures or "",
        batch_timeout_s=args.batch_timeout or 0.0,
        pause_after_canary=args.pause_after_canary,
    )


def _revision_flags(parser: argparse.ArgumentParser) -> None:
    """What every command that makes a revision takes: why, and how long to wait."""
    parser.add_argument(
        "-m",
        "--message",
        default="",
        help="why: recorded with the revision ('plumb history' shows it)",
    )
    _wait_flag(parser, 5.0, "connected nodes to acknowledge the new catalog")


def _wait_flag(parser: argparse.ArgumentParser, default: float, what: str) -> None:
    parser.add_argument(
        "--wait",
        type=_bounded(float, 0.1, 60.0, "a number of seconds"),
        default=default,
        metavar="SECONDS",
        help=f"how long to wait for {what} (default: {default:g})",
    )


def _add_revision_commands(sub: Any) -> None:
    """Manifests and revisions over time: list, remove, history, diff, rollback, label."""
    manifests = sub.add_parser(
        "manifests",
        parents=[_common()],
        help="the manifests of the latest revision: target, resources, nodes, last change",
    )
    _json_flag(manifests)
    manifests.set_defaults(func=_manifests)

    manifest = sub.add_parser(
        "manifest", help="one manifest: remove it (optionally purging what it managed)"
    ).add_subparsers(required=True, metavar="ACTION")
    rm = manifest.add_parser(
        "rm",
        parents=[_common()],
        help="a new revision without a manifest; --purge also removes what it managed",
        description="Store a new revision without manifest NAME. Without --purge its "
        "resources are no longer managed: left as they are, and no longer reported. With "
        "--purge the nodes' agents remove what can be removed (files, packages, routes, "
        "firewall tables Plumb made), in reverse require order; a service is left as it "
        "is. Something another manifest manages is never removed. Exit 1 if refused.",
    )
    rm.add_argument("name", metavar="NAME")
    rm.add_argument(
        "--purge",
        action="store_true",
        help="remove what it managed from the nodes (shows the plan and asks first)",
    )
    rm.add_argument(
        "--plan-first", action="store_true", help="show the plan and ask, also without --purge"
    )
    rm.add_argument("--yes", action="store_true", help="do not ask before a purge (for scripts)")
    _revision_flags(rm)
    _json_flag(rm)
    rm.set_defaults(func=_manifest_rm)

    history = sub.add_parser(
        "history",
        parents=[_common()],
        help="revisions, newest first: who, when, why, which manifests changed",
    )
    history.add_argument("name", nargs="?", metavar="NAME", help="only revisions changing it")
    history.add_argument(
        "--limit",
        type=_bounded(int, 1, MAX_HISTORY_LIMIT, "a number of revisions"),
        default=20,
        help=f"at most this many, up to {MAX_HISTORY_LIMIT} (default: 20)",
    )
    _json_flag(history)
    history.set_defaults(func=_history)

    diff = sub.add_parser(
        "diff",
        parents=[_common()],
        help="what changes between two revisions: manifest text, then resources per node",
        description="The manifests' text diff from revision OLD to NEW (default: the latest), "
        "then which resources that changes on which enrolled nodes' catalogs (compiled for "
        "the nodes as they are now). Resources marked sensitive are redacted.",
    )
    diff.add_argument("old", type=_bounded(int, 0, 2**62, "a revision number"), metavar="OLD")
    diff.add_argument(
        "new",
        type=_bounded(int, 1, 2**62, "a revision number"),
        nargs="?",
        default=0,
        metavar="NEW",
    )
    _json_flag(diff)
    diff.set_defaults(func=_diff)

    rollback = sub.add_parser(
        "rollback",
        parents=[_common()],
        help="a new revision with an earlier revision's content (all, or one manifest)",
        description="Store a new revision whose content is revision REV's: all of it, or "
        "manifest NAME's only (a manifest REV did not have is removed, without purge). It "
        "is rolled out like a push. Exit 1 if refused.",
    )
    rollback.add_argument("name", nargs="?", metavar="NAME", help="only this manifest")
    rollback.add_argument(
        "--to",
        required=True,
        type=_bounded(int, 1, 2**62, "a revision number"),
        metavar="REV",
        help="the revision whose content to restore ('plumb history' lists them)",
    )
    _revision_flags(rollback)
    _staged_flags(rollback)
    _json_flag(rollback)
    rollback.set_defaults(func=_rollback)

    label = sub.add_parser(
        "label",
        parents=[_common()],
        help="set or remove a node's labels (its catalog follows at once)",
        description="Set KEY=VALUE labels on node NODE and remove the --remove ones. If the "
        "manifests that select it change, a new catalog is compiled for it and delivered "
        "(now if it is connected, else when it connects). Label names cannot be 'name' or "
        "a fact's name (os.family, arch, ...).",
    )
    label.add_argument("node", metavar="NODE")
    label.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    label.add_argument(
        "--remove", action="append", default=[], metavar="KEY", help="remove label KEY"
    )
    _wait_flag(label, 5.0, "the node to acknowledge a new catalog")
    _json_flag(label)
    label.set_defaults(func=_label)


def _manifests(args: argparse.Namespace) -> int:
    reply = _stub(args).ListManifests(pb.ListManifestsRequest(), timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.manifests(reply))
    if not reply.revision:
        print("nothing was pushed yet", file=sys.stderr)
        return 0
    _table(
        ["MANIFEST", "FILE", "TARGET", "MODE", "RESOURCES", "NODES", "CHANGED IN", "BY"],
        [
            [
                m.name,
                m.file,
                m.target or "-",
                m.mode,
                str(m.resources),
                str(len(m.nodes)),
                f"{m.changed_in} ({_when(m.changed_at)})",
                m.author or "-",
            ]
            for m in reply.manifests
        ],
    )
    print(f"revision {reply.revision}: {len(reply.manifests)} manifest(s)", file=sys.stderr)
    for name in reply.purging:
        print(f"{name}: removed with --purge; its objects are being removed", file=sys.stderr)
    return 0


def _manifest_rm(args: argparse.Namespace) -> int:
    if (args.purge or args.plan_first) and not args.yes:
        planned = pb.PlanRequest(remove_manifest=args.name, purge=args.purge)
        if not _planned_and_confirmed(args, planned, "manifest rm"):
            return 1
    request = pb.RemoveManifestRequest(
        name=args.name, purge=args.purge, message=args.message, wait_s=args.wait
    )
    reply = _stub(args).RemoveManifest(request, timeout=TIMEOUT_S + args.wait)
    return _new_revision(args, reply, "manifest rm")


def _rollback(args: argparse.Namespace) -> int:
    request = pb.RollbackRequest(
        to=args.to,
        name=args.name or "",
        message=args.message,
        wait_s=args.wait,
        rollout=_rollout_settings(args),
    )
    reply = _stub(args).Rollback(request, timeout=TIMEOUT_S + args.wait)
    return _new_revision(args, reply, "rollback")


def _history(args: argparse.Namespace) -> int:
    request = pb.ListRevisionsRequest(manifest=args.name or "", limit=args.limit)
    reply = _stub(args).ListRevisions(request, timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.history(reply))
    _table(
        ["REVISION", "WHEN", "BY", "ORIGIN", "CHANGES", "MESSAGE"],
        [
            [
                str(r.revision),
                _when(r.created_at),
                r.author or "-",
                r.origin,
                cliviews.revision_changes(r) or "-",
                r.message or "-",
            ]
            for r in reply.revisions
        ],
    )
    if not reply.revisions:
        print(
            f"no revision changed {args.name!r}" if args.name else "nothing was pushed yet",
            file=sys.stderr,
        )
    return 0


def _diff(args: argparse.Namespace) -> int:
    request = pb.DiffRevisionsRequest(old=args.old, new=args.new)
    reply = _stub(args).DiffRevisions(request, timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.diff(reply))
    if not reply.manifests:
        print(f"revisions {reply.old} and {reply.new} ask the same: no manifest differs")
        return 0
    for m in reply.manifests:
        print(f"# manifest {m.name}: {m.change}")
        print(m.unified, end="")
    print(f"\n# resources, revision {reply.old} -> {reply.new} (the nodes as they are now)")
    if not reply.resources:
        print("  no node's catalog changes")
    for r in reply.resources:
        fields = f" ({', '.join(r.fields)})" if r.fields else ""
        print(f"  {r.change} {r.resource_id}{fields}: {len(r.nodes)} node(s): {', '.join(r.nodes)}")
    return 0


def _label(args: argparse.Namespace) -> int:
    put = _parse_labels(args.labels)
    if not put and not args.remove:
        raise CLIError("nothing to change: give KEY=VALUE labels and/or --remove KEY")
    request = pb.SetLabelsRequest(
        node_name=args.node, set=put, remove=args.remove, wait_s=args.wait
    )
    reply = _on_node(lambda: _stub(args).SetLabels(request, timeout=TIMEOUT_S + args.wait))
    if args.json:
        return _print_json(cliviews.labels(reply))
    print(f"node {reply.node_name}: labels {_labels(reply.labels)}")
    before, after = list(reply.matched_before), list(reply.matched_after)
    if before == after:
        print(f"  the same manifests select it: {', '.join(after) or 'none'}; catalog unchanged")
        return 0
    print(f"  manifests before: {', '.join(before) or 'none'}; now: {', '.join(after) or 'none'}")
    if reply.catalog_problem:
        print(f"  no catalog for it now:\n{_indented(reply.catalog_problem)}", file=sys.stderr)
        return 1
    if reply.refused:
        print(f"  REFUSED by {reply.node_name}: {reply.refused}")
        return 1
    if reply.delivered:
        print(f"  new catalog (revision {reply.revision}) delivered (acknowledged)")
    elif reply.revision:
        print(
            f"  new catalog (revision {reply.revision}) not delivered yet: it gets it "
            "when it connects"
        )
    return 0


def _add_waiver_commands(sub: Any) -> None:
    waiver = sub.add_parser(
        "waiver", help="accepted exceptions to compliance: add, list, revoke (admins add)"
    ).add_subparsers(required=True, metavar="ACTION")
    add = waiver.add_parser(
        "add",
        parents=[_common()],
        help="accept a control's (or one resource's) failures on some nodes until a date",
        description="Results of the control (or the resource) that are not compliant count "
        "as 'waived' on the nodes --target picks (default: all) until --expires: shown as "
        "waived, and counted in the score with waivers only. An expired waiver covers "
        "nothing from that moment. The approver is you (your operator identity). A waiver "
        "naming a control or resource the latest revision does not have is refused. Admins.",
    )
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--control", metavar="C", help="a control tag (as in controls:)")
    what.add_argument("--resource", metavar="ID", help="one resource (kind/name)")
    add.add_argument("--target", metavar="SELECTOR", default="", help="only these nodes")
    add.add_argument("--reason", required=True, help="why it is accepted (recorded)")
    add.add_argument(
        "--expires",
        required=True,
        type=_until,
        metavar="T",
        help="a date (2027-01-31, '2027-01-31 18:00', local) or a time from now (30d, 12h)",
    )
    _json_flag(add)
    add.set_defaults(func=_waiver_add)
    listing = waiver.add_parser("list", parents=[_common()], help="waivers in force")
    listing.add_argument("--all", action="store_true", help="also expired and revoked ones")
    _json_flag(listing)
    listing.set_defaults(func=_waiver_list)
    revoke = waiver.add_parser(
        "revoke", parents=[_common()], help="end a waiver now (it stays listed, revoked)"
    )
    revoke.add_argument(
        "id", type=_bounded(int, 1, 2**31, "a waiver id"), metavar="ID", help="as 'list' shows"
    )
    _json_flag(revoke)
    revoke.set_defaults(func=_waiver_revoke)


def _until(text: str) -> float:
    """An argparse type: ``30d`` (from now) or ``2027-01-31 18:00`` (local) as unix seconds."""
    age = _AGE.fullmatch(text.strip())
    if age:
        return time.time() + float(age.group(1)) * _SECONDS[age.group(2)]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date (2027-01-31, '2027-01-31 18:00') or a time from now "
            f"(12h, 30d), got {text!r}"
        ) from None


def _waiver_add(args: argparse.Namespace) -> int:
    request = pb.AddWaiverRequest(
        control=args.control or "",
        resource_id=args.resource or "",
        target=args.target,
        reason=args.reason,
        expires_at=args.expires,
    )
    reply = _stub(args).AddWaiver(request, timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.waiver(reply))
    print(f"waiver {reply.id}: {_waived(reply)} until {_when(reply.expires_at)}")
    return 0


def _waived(w: pb.WaiverInfo) -> str:
    what = f"control {w.control}" if w.control else f"resource {w.resource_id}"
    return f"{what} on {w.target or 'every node'}, approved by {w.approver}"


def _waiver_list(args: argparse.Namespace) -> int:
    reply = _stub(args).ListWaivers(pb.ListWaiversRequest(all=args.all), timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.waivers(reply))
    _table(
        ["ID", "STATE", "COVERS", "TARGET", "EXPIRES", "APPROVER", "REASON"],
        [
            [
                str(w.id),
                w.state,
                f"control {w.control}" if w.control else w.resource_id,
                w.target or "all",
                _when(w.expires_at),
                w.approver,
                w.reason,
            ]
            for w in reply.waivers
        ],
    )
    if not reply.waivers:
        print(
            "no waivers" + ("" if args.all else " in force (--all lists every one)"),
            file=sys.stderr,
        )
    return 0


def _waiver_revoke(args: argparse.Namespace) -> int:
    reply = _on_node(
        lambda: _stub(args).RevokeWaiver(pb.RevokeWaiverRequest(id=args.id), timeout=TIMEOUT_S)
    )
    if args.json:
        return _print_json(cliviews.waiver(reply))
    print(f"waiver {reply.id} revoked at {_when(reply.revoked_at)}: {_waived(reply)}")
    return 0


def _add_rollout_commands(sub: Any) -> None:
    rollout = sub.add_parser(
        "rollout", help="the staged rollout of the latest revision: status, resume, abort, rollback"
    ).add_subparsers(required=True, metavar="ACTION")
    status = rollout.add_parser(
        "status", parents=[_common()], help="its batches, nodes and their outcome"
    )
    _json_flag(status)
    status.set_defaults(func=_rollout_status)
    for action, helptext in (
        ("resume", "go on with a paused or halted rollout"),
        ("abort", "stop it: each node keeps the revision it has until the next push"),
        (
            "rollback",
            "return the nodes it reached to the previous revision, in batches (a new revision "
            "with the previous content)",
        ),
    ):
        steer = rollout.add_parser(action, parents=[_common()], help=helptext)
        steer.add_argument("-m", "--message", default="", help="why (recorded)")
        _json_flag(steer)
        steer.set_defaults(func=_rollout_steer, action=action)


def _rollout_status(args: argparse.Namespace) -> int:
    reply = _stub(args).GetRollout(pb.GetRolloutRequest(), timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.rollout(reply))
    if not reply.id:
        print("no rollout yet: 'plumb push --canary N ...' starts one", file=sys.stderr)
        return 0
    _print_rollout(reply)
    return 0


def _print_rollout(r: pb.RolloutInfo) -> None:
    failed = sum(1 for n in r.nodes if n.state == "failed")
    print(
        f"rollout {r.id} ({r.kind}) of revision {r.revision} (previous {r.previous_revision}): "
        f"{r.state}; {failed} failed of {r.max_failures} allowed"
        + ("" if r.current else "; a newer revision replaced it")
    )
    if r.reason:
        print(f"  {r.reason}")
    _table(
        ["BATCH", "NODE", "STATE", "SENT", "FINISHED", "WHY"],
        [
            [
                str(n.batch) + (" (canary)" if n.batch == 0 and r.settings.canary else ""),
                n.node_name,
                n.state,
                _when(n.sent_at),
                _when(n.finished_at),
                n.reason or "-",
            ]
            for n in r.nodes
        ],
    )


def _rollout_steer(args: argparse.Namespace) -> int:
    request = pb.SteerRolloutRequest(action=args.action, message=args.message)
    reply = _stub(args).SteerRollout(request, timeout=TIMEOUT_S + 10)
    if args.json:
        return _print_json(cliviews.steered(reply))
    if args.action == "rollback":
        if reply.rollback.errors:
            _print_errors(reply.rollback.errors, "rollback")
            return 1
        print(f"rolled back: revision {reply.rollback.revision} has the previous content")
    _print_rollout(reply.rollout)
    return 0


def _add_operator_commands(sub: Any) -> None:
    operator = sub.add_parser(
        "operator", help="operators and their roles: add, list, revoke (admins)"
    ).add_subparsers(required=True, metavar="ACTION")
    add = operator.add_parser(
        "add",
        parents=[_common()],
        help="a new operator: its key (made here), certificate and portable CLI config",
        description="Make a key here, have the server certify it for operator NAME with "
        "ROLE, and write key, certificate, CA certificate and a cli.toml naming them "
        "(relative paths: the directory works wherever it is copied) into --out (0700, "
        "files 0600). Only the certificate request reaches the server. Admins only.",
    )
    add.add_argument("name", metavar="NAME", help=operators.NAME_RULE)
    add.add_argument(
        "--role",
        required=True,
        choices=[role.value for role in operators.Role],
        help="viewer reads; operator also pushes; admin also manages tokens, nodes and operators",
    )
    add.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="a new (or empty) directory for its config (default: ./plumb-operator-NAME)",
    )
    _json_flag(add)
    add.set_defaults(func=_operator_add)
    renew = operator.add_parser(
        "renew",
        parents=[_common()],
        help="renew your own certificate: a new key here, the old certificate refused after",
        description="Make a new key here, have the server certify it for the operator this "
        "config is, and write both in place of the old key and certificate (where the config "
        "names them). The old certificate is refused from then on. Any role may renew its "
        "own; every plumb command warns once the certificate is in its last third.",
    )
    _json_flag(renew)
    renew.set_defaults(func=_operator_renew)
    listing = operator.add_parser(
        "list", parents=[_common()], help="operators: name, role, current certificate"
    )
    listing.add_argument("--all", action="store_true", help="also the revoked ones")
    _json_flag(listing)
    listing.set_defaults(func=_operator_list)
    revoke = operator.add_parser(
        "revoke",
        parents=[_common()],
        help="revoke an operator: its next call is refused (admins; never the last admin)",
    )
    revoke.add_argument("name", metavar="NAME")
    _json_flag(revoke)
    revoke.set_defaults(func=_operator_revoke)


def _add_audit_command(sub: Any) -> None:
    audit = sub.add_parser(
        "audit",
        parents=[_common()],
        help="the audit log: who changed what, when, from where; --verify checks its chain",
        description="List the audit log, oldest first: every change made through the "
        "server (push, tokens, nodes, operators), every enrollment, every refused call, "
        "with who, when, from where and the result. With --verify, check its hash chain "
        "instead: exit 0 if it is intact, 1 naming the first entry that breaks it.",
    )
    audit.add_argument(
        "--since",
        type=_since,
        metavar="T",
        help="only entries from T on: a time (2026-12-01, '2026-12-01 10:00', local) or an "
        "age (90s, 15m, 2h, 7d)",
    )
    audit.add_argument(
        "--limit",
        type=_bounded(int, 1, MAX_AUDIT_LIMIT, "a number of entries"),
        default=100,
        help=f"the newest this many, up to {MAX_AUDIT_LIMIT} (default: 100)",
    )
    audit.add_argument(
        "--verify", action="store_true", help="check the hash chain (exit 1 if broken)"
    )
    _json_flag(audit)
    audit.set_defaults(func=_audit)


_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(text: str, now: Callable[[], float] = time.time) -> float:
    """An argparse type: ``7d`` (an age) or ``2026-12-01 10:00`` (local time) as unix seconds."""
    age = _AGE.fullmatch(text.strip())
    if age:
        return now() - float(age.group(1)) * _SECONDS[age.group(2)]
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a time (2026-12-01, '2026-12-01 10:00') or an age (90s, 15m, 2h, 7d), "
            f"got {text!r}"
        ) from None
    return moment.timestamp()  # naive: local time, as the tables print it


def _node_parser(sub: Any) -> None:
    """``plumb node ACTION NAME``: one node's identity (each action adds itself)."""
    node = sub.add_parser(
        "node", help="one node's identity: revoke it, remove it, re-enroll it"
    ).add_subparsers(required=True, metavar="ACTION")
    _node_revoke_parser(node)
    _node_rm_parser(node)
    _node_reenroll_parser(node)


def _node_revoke_parser(node: Any) -> None:
    revoke = node.add_parser(
        "revoke",
        parents=[_common()],
        help="revoke a node's certificate: its session ends, it can no longer connect",
        description="Revoke the node's certificate. Its live session ends at once and it is "
        "refused from then on; it stays in 'plumb nodes' (as revoked) and in compliance "
        "until it is enrolled again. Revoking a revoked node changes nothing. "
        "Exit 1 if there is no such node.",
    )
    revoke.add_argument("name", metavar="NAME")
    _json_flag(revoke)
    revoke.set_defaults(func=_node_revoke)


def _node_rm_parser(node: Any) -> None:
    rm = node.add_parser(
        "rm",
        parents=[_common()],
        help="decommission a node: revoke it and drop it from nodes and compliance",
        description="Decommission the node: revoke its certificate, end its session, and "
        "leave it out of 'plumb nodes' (see --all), pushes and compliance. Its reports and "
        "drift events stay ('plumb report', 'plumb drift --node'). The name can be enrolled "
        "again, as a new node. Removing a removed node changes nothing. "
        "Exit 1 if there is no such node.",
    )
    rm.add_argument("name", metavar="NAME")
    _json_flag(rm)
    rm.set_defaults(func=_node_rm)


def _add_token_commands(sub: Any) -> None:
    token = sub.add_parser("token", help="enrollment tokens: create, list, revoke").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = token.add_parser(
        "create",
        parents=[_common()],
        help="make a token for enrolling nodes",
        description="Make an enrollment token. It lives --ttl seconds and enrolls --uses "
        "nodes, at most what the server allows (its token_max_ttl_s and token_max_uses: "
        "7 days and 1000 by default). Bound with --names or --name-pattern, it enrolls "
        "only nodes of those names; unbound, any name but one that a manifest targets by "
        "name, and never the name of an enrolled node ('plumb node reenroll' does that).",
    )
    create.add_argument(
        "--labels",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="labels every node enrolled with this token gets",
    )
    create.add_argument(
        "--ttl",
        type=_bounded(int, 1, MAX_WIRE_UINT, "a number of seconds"),
        default=0,
        help="seconds valid (default: 3600, or the server's token_max_ttl_s if lower; "
        "the server refuses more than that)",
    )
    create.add_argument(
        "--uses",
        type=_bounded(int, 1, MAX_WIRE_UINT, "a number of nodes"),
        default=1,
        help="how many nodes may enroll with it (default: 1; the server refuses more than "
        "its token_max_uses)",
    )
    bind = create.add_mutually_exclusive_group()
    bind.add_argument(
        "--names",
        type=_names,
        metavar="NAME,...",
        help="only nodes of these names may enroll with it",
    )
    bind.add_argument(
        "--name-pattern",
        type=_name_pattern,
        metavar="PATTERN",
        help="only nodes whose name matches this shell-style pattern may enroll with it "
        "('web-*': * is any run of characters, dots included; ? one; [a-c] a set)",
    )
    create.add_argument(
        "--install-command",
        action="store_true",
        help="print, instead of the bare token, one shell line that installs the agent, "
        "enrolls it with the token (passed on stdin, never as an argument other users "
        "could read) and starts it: paste it as root on the new node",
    )
    create.add_argument(
        "--package",
        metavar="PATH",
        help="the install command installs this .deb (or .rpm) file, as it is named on the "
        "node, instead of plumb-agent from the node's repositories (implies --install-command)",
    )
    _json_flag(create)
    create.set_defaults(func=_token_create)

    listing = token.add_parser(
        "list",
        parents=[_common()],
        help="tokens (never their secrets): id, labels, names, uses, expiry, nodes",
    )
    listing.add_argument(
        "--all", action="store_true", help="also expired, used-up and revoked tokens"
    )
    _json_flag(listing)
    listing.set_defaults(func=_token_list)

    revoke = token.add_parser(
        "revoke",
        parents=[_common()],
        help="revoke a token: it enrolls nothing more (nodes it enrolled stay enrolled)",
    )
    revoke.add_argument("id", metavar="ID", help="the token's id, as 'plumb token list' shows")
    _json_flag(revoke)
    revoke.set_defaults(func=_token_revoke)


def _node_reenroll_parser(node: Any) -> None:
    reenroll = node.add_parser(
        "reenroll",
        parents=[_common()],
        help="a single-use token that gives an enrolled node a new certificate",
        description="Make a token that enrolls NAME once more, replacing its certificate "
        "(a new host under the same name, a lost or leaked key): the only way an enrolled "
        "name is ever enrolled again. The node keeps its labels and history; its old "
        "certificate is no longer its current one once the new one is issued.",
    )
    reenroll.add_argument("name", metavar="NAME", help="the enrolled node")
    reenroll.add_argument(
        "--ttl",
        type=_bounded(int, 1, MAX_WIRE_UINT, "a number of seconds"),
        default=0,
        help="seconds valid (default: 900, or the server's token_max_ttl_s if lower)",
    )
    _json_flag(reenroll)
    reenroll.set_defaults(func=_node_reenroll)


def _names(text: str) -> list[str]:
    """An argparse type: ``db-2,db-3`` → ``["db-2", "db-3"]``, each a valid node name."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if not tokens.valid_node_name(name):
            raise argparse.ArgumentTypeError(f"invalid node name {name!r}: {tokens.NAME_RULE}")
    return names


def _name_pattern(text: str) -> str:
    problem = tokens.pattern_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON for scripts (shapes: server/cliviews.py)"
    )


def _bounded(number: Callable[[str], N], low: N, high: N, what: str) -> Callable[[str], N]:
    """An argparse type: a number (``int`` or ``float``) from ``low`` to ``high``.

    Anything else is refused in one line saying what was expected.
    """

    def parse(text: str) -> N:
        try:
            value = number(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected {what} from {low:g} to {high:g}, got {text!r}"
            )
        return value

    return parse


# ------------------------------------------------------------------ connection


def load_config(path: Path | None) -> CLIConfig:
    """The CLI config; its relative paths are relative to its own directory (portable)."""
    path = path or Path(os.environ.get("PLUMB_CONFIG", DEFAULT_CONFIG))
    try:
        raw = tomllib.loads(path.read_text())
        here = path.parent
        return CLIConfig(
            server=raw["server"],
            ca=here / raw["ca"],
            cert=here / raw["cert"],
            key=here / raw["key"],
        )
    except FileNotFoundError:
        raise CLIError(
            f"no CLI config at {path}: pass --config or set PLUMB_CONFIG "
            "('plumb-server init' and 'operator add' write one)"
        ) from None
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise CLIError(f"{path}: invalid CLI config ({exc})") from exc


def _stub(args: argparse.Namespace) -> pb_grpc.AdminStub:
    config = load_config(args.config)
    # A renewal a crash interrupted: finished before the pair is read.
    finish_replace(config.key, config.cert)
    try:
        cert_bytes = config.cert.read_bytes()
        credentials = grpc.ssl_channel_credentials(
            config.ca.read_bytes(), config.key.read_bytes(), cert_bytes
        )
    except OSError as exc:
        raise CLIError(f"cannot read the operator's key or certificates: {exc}") from exc
    if args.func is not _operator_renew:
        _warn_if_renewal_due(cert_bytes, config.cert)
    return pb_grpc.AdminStub(grpc.secure_channel(args.server or config.server, credentials))


def _warn_if_renewal_due(
    cert_pem: bytes, where: Path, now: Callable[[], float] = time.time
) -> None:
    """Say so on stderr once the operator's certificate is in its last third."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return  # the server refuses it, saying why
    not_after = cert.not_valid_after_utc.timestamp()
    left = not_after - time.time()
    if left < renew_within(not_after - cert.not_valid_before_utc.timestamp()):
        state = "expired" if left <= 0 else f"expires in {left / 86400:.1f} days"
        print(
            f"plumb: warning: your certificate ({where}) {state}, at {_when(not_after)}: "
            "renew it with 'plumb operator renew'",
            file=sys.stderr,
        )


def _rpc_message(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return f"{details} ({code.name if code else 'error'})"


TIMEOUT_S = 30
#: What the wire carries (uint32): token TTLs and uses are capped by the
#: server (server.toml's token_max_ttl_s, token_max_uses), which says its limit.
MAX_WIRE_UINT = 2**32 - 1
#: Limits the server enforces too (server.admin); checked here to say so in one line.
MAX_DRIFT_LIMIT = 10_000
MAX_AUDIT_LIMIT = 10_000
MAX_HISTORY_LIMIT = 10_000
MAX_RUNS_LIMIT = 10_000
#: How many of the newest drift events an evidence export lists.
EXPORT_DRIFT_EVENTS = 1000
#: A plan names at most this many nodes for each group of nodes alike.
PLAN_NAMES_SHOWN = 10
#: A node's clock further off the server's than this is worth a line.
CLOCK_WARN_S = 60.0


# ------------------------------------------------------------------ commands


def _token_create(args: argparse.Namespace) -> int:
    labels = _parse_labels(args.labels)
    request = pb.CreateTokenRequest(
        labels=labels,
        ttl_s=args.ttl,
        uses=args.uses,
        names=args.names or [],
        name_pattern=args.name_pattern or "",
    )
    reply = _stub(args).CreateToken(request, timeout=TIMEOUT_S)
    only = list(reply.names)
    name = only[0] if len(only) == 1 else None
    valid = (
        f"token {reply.id}, valid until {_when(reply.expires_at)} for {reply.uses} node(s), "
        f"{_binding(reply.names, reply.name_pattern)}"
    )
    if args.install_command or args.package:
        command = install_command(reply.enroll_address, reply.token, args.package, name)
        if args.json:
            return _print_json(cliviews.token(reply, command))
        print(f"# {valid}; run this as root on the node:", file=sys.stderr)
        print(command)
        return 0
    if args.json:
        return _print_json(cliviews.token(reply, None))
    print(reply.token)
    print(
        f"# {valid}; on the node run (as root):\n"
        f"#   {enroll_command(reply.enroll_address, reply.token, name)}",
        file=sys.stderr,
    )
    return 0


def enroll_command(
    enroll_address: str, token: str, name: str | None = None, replace: bool = False
) -> str:
    """``plumb-agent enroll`` with the token on its standard input, never in its arguments.

    Arguments of a process are world-readable (/proc/PID/cmdline): a token
    there is a token for every user of the host while enroll runs. ``printf``
    is built into every shell (sh, bash, dash, zsh, busybox), so it runs as
    no process of its own: the token appears in no process's arguments, only
    in the pipe.
    """
    if not enroll_address:
        raise CLIError("the server did not say where agents enroll (is it older than this CLI?)")
    command = (
        f"printf '%s\\n' {shlex.quote(token)} | "
        f"plumb-agent enroll --server {shlex.quote(enroll_address)} --token -"
    )
    if name:
        command += f" --name {shlex.quote(name)}"
    return command + (" --replace" if replace else "")


def install_command(
    enroll_address: str, token: str, package: str | None = None, name: str | None = None
) -> str:
    """One shell line for a fresh node: install the agent, enroll it, start it.

    Each step runs only if the one before succeeded, and running the line
    again is harmless: the package is installed already and an enrolled node
    keeps its identity. ``package`` is a local .deb or .rpm path on the node;
    without it the node's own repositories provide plumb-agent. ``name`` is
    the node's name when the token allows one name only. The token goes to
    the agent on its standard input (see :func:`enroll_command`).
    """
    if package is None:
        install = "apt-get install -y plumb-agent"
    else:
        # apt-get and dnf take a bare name for a package name, so a file needs a '/'.
        path = package if "/" in package else f"./{package}"
        tool = "dnf" if package.endswith(".rpm") else "apt-get"
        install = f"{tool} install -y {shlex.quote(path)}"
    enroll = enroll_command(enroll_address, token, name)
    return f"{install} && {enroll} && systemctl start plumb-agent"


def _binding(names: Sequence[str], pattern: str) -> str:
    if names:
        return f"only the name(s) {', '.join(names)}"
    if pattern:
        return f"only names matching {pattern!r}"
    return "any name not targeted by name"


def _token_list(args: argparse.Namespace) -> int:
    reply = _stub(args).ListTokens(pb.ListTokensRequest(all=args.all), timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.tokens(reply))
    _table(
        ["ID", "STATE", "LABELS", "NAMES", "USED", "CREATED", "EXPIRES", "NODES"],
        [
            [
                t.id,
                t.state + (f" {_when(t.revoked_at)}" if t.revoked_at else ""),
                _labels(t.labels),
                _token_names(t),
                f"{t.uses - t.uses_left}/{t.uses}",
                _when(t.created_at),
                _when(t.expires_at),
                ",".join(t.nodes) or "-",
            ]
            for t in reply.tokens
        ],
    )
    if not reply.tokens:
        what = "no tokens" if args.all else "no valid tokens ('plumb token list --all' shows all)"
        print(what, file=sys.stderr)
    return 0


def _token_names(t: pb.TokenInfo) -> str:
    names = ",".join(t.names) or t.name_pattern or "any"
    return f"{names} (re-enroll)" if t.reenroll else names


def _token_revoke(args: argparse.Namespace) -> int:
    reply = _stub(args).RevokeToken(pb.RevokeTokenRequest(id=args.id), timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.revoked(reply))
    t = reply.token
    when = "already revoked" if reply.already_revoked else "revoked"
    print(f"token {t.id} {when} at {_when(t.revoked_at)}: it enrolls nothing more")
    if t.nodes:
        print(f"nodes it enrolled stay enrolled: {', '.join(t.nodes)}", file=sys.stderr)
    return 0


def _node_reenroll(args: argparse.Namespace) -> int:
    request = pb.ReenrollNodeRequest(node_name=args.name, ttl_s=args.ttl)
    reply = _stub(args).ReenrollNode(request, timeout=TIMEOUT_S)
    command = enroll_command(reply.enroll_address, reply.token, args.name, replace=True)
    if args.json:
        return _print_json(cliviews.reenroll(reply, args.name, command))
    print(reply.token)
    print(
        f"# token {reply.id} re-enrolls {args.name} once, until {_when(reply.expires_at)}; "
        f"on the node run (as root):\n#   {command} && systemctl restart plumb-agent",
        file=sys.stderr,
    )
    return 0


def _parse_labels(items: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"label {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def _push(args: argparse.Namespace) -> int:
    files = [_manifest_file(path) for path in args.files]
    _check_size(files)
    if args.plan_first and not _planned_and_confirmed(args, pb.PlanRequest(files=files), "push"):
        return 1
    request = pb.PushRequest(
        files=files, wait_s=args.wait, message=args.message, rollout=_rollout_settings(args)
    )
    reply = _stub(args).Push(request, timeout=TIMEOUT_S + args.wait)
    return _new_revision(args, reply, "push")


def _planned_and_confirmed(args: argparse.Namespace, request: pb.PlanRequest, what: str) -> bool:
    """Show the plan of ``request`` and ask whether to go on; False: do not."""
    planned = _stub(args).Plan(request, timeout=TIMEOUT_S + 10)
    if args.json:
        _print_json(cliviews.plan(planned))
    if planned.errors:
        _print_errors(planned.errors, what)
        return False
    if not args.json:
        _print_plan(planned)
    if not _confirmed(f"{what}: go on?"):
        print(f"plumb: {what}: not done; nothing was stored", file=sys.stderr)
        return False
    return True


def _confirmed(question: str) -> bool:
    """Ask on the terminal (standard error and input); only 'y' or 'yes' is a yes."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _plan(args: argparse.Namespace) -> int:
    files = [_manifest_file(path) for path in args.files]
    _check_size(files)
    request = pb.PlanRequest(files=files, target=args.target, wait_s=args.wait)
    reply = _stub(args).Plan(request, timeout=TIMEOUT_S + args.wait)
    if args.json:
        _print_json(cliviews.plan(reply))
    elif reply.errors:
        _print_errors(reply.errors, "push")
    else:
        _print_plan(reply)
    return 1 if reply.errors else 0


def _print_plan(reply: pb.PlanResponse) -> None:
    answered = list(reply.answered)
    against = (
        f"against revision {reply.base_revision}" if reply.base_revision else "(nothing pushed yet)"
    )
    print(f"plan {against}: {len(answered)} node(s) answered")
    if reply.unchanged:
        print("  the manifests are identical to the latest revision: a push would store nothing")
    summary = plan_.summarize(answered)
    for s in summary:
        print(f"  {s.line()}")
    if not summary and answered:
        print("  no change on any node that answered")
    for nodes, shown in plan_.alike(answered):
        names = ", ".join(nodes[:PLAN_NAMES_SHOWN])
        more = f" and {len(nodes) - PLAN_NAMES_SHOWN} more" if len(nodes) > PLAN_NAMES_SHOWN else ""
        print(f"\n{names}{more}" + (f" ({len(nodes)} nodes)" if len(nodes) > 1 else "") + ":")
        for r in shown:
            status = cliviews.status_word(r.status)
            word = "would change" if r.status == pb.DRIFTED else status
            print(f"  {r.id}: {word}" + (f": {r.error}" if r.error else ""))
            for c in r.changes:
                print(f"    {c.field}: {c.observed} -> {c.desired}")
                if c.diff:
                    print(_indented(_indented(c.diff.rstrip("\n"))))
    if reply.no_answer:
        print(f"\nno answer in time: {', '.join(reply.no_answer)} (not evaluated)")
    if reply.offline:
        print(f"offline: {', '.join(reply.offline)} (not evaluated)")
    for name, why in sorted(reply.refused.items()):
        print(f"REFUSED by {name}: {why}")


def _check_size(files: Sequence[pb.ManifestFile]) -> None:
    total = sum(len(f.content.encode()) for f in files)
    if total > MAX_PUSH_BYTES:
        raise CLIError(
            f"the manifests add up to {total / 2**20:.1f} MiB; a push takes at most "
            f"{MAX_PUSH_BYTES // 2**20} MiB (split them, or move large content out of them)"
        )


def _print_errors(errors: Sequence[pb.ManifestError], what: str) -> None:
    for e in errors:
        where = f"{e.file}:{e.line}: " if e.file else ""
        print(f"{where}{e.field + ': ' if e.field else ''}{e.message}", file=sys.stderr)
    if errors:
        print(
            f"plumb: {what} refused ({len(errors)} error(s)); nothing was stored",
            file=sys.stderr,
        )


def _new_revision(args: argparse.Namespace, reply: pb.PushResponse, what: str) -> int:
    """Print what a push, manifest rm or rollback did; exit 1 if it was refused."""
    if args.json:
        _print_json(cliviews.push(reply))
    elif reply.errors:
        _print_errors(reply.errors, what)
    else:
        _print_push(reply, args.wait)
    return 1 if reply.errors else 0


def _manifest_file(path: Path) -> pb.ManifestFile:
    try:
        return pb.ManifestFile(path=str(path), content=path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {path}: {exc}") from exc


def _print_push(reply: pb.PushResponse, wait: float) -> None:
    for name in reply.unmatched_names:
        print(f"plumb: warning: target.names: no enrolled node is named {name!r}", file=sys.stderr)
    for name in reply.unmatched_manifests:
        print(
            f"plumb: warning: manifest {name!r}: its target selects no enrolled node "
            "('plumb nodes --target SELECTOR' shows who a selector picks)",
            file=sys.stderr,
        )
    if reply.unchanged:
        print(
            f"revision {reply.revision} unchanged: the manifests are identical to it; "
            "nothing stored, nothing sent"
        )
        return
    if reply.rollout_id:
        print(
            f"revision {reply.revision}: rollout {reply.rollout_id} started for "
            f"{len(reply.targeted_nodes)} node(s), batch by batch ('plumb rollout status' "
            "follows it)"
        )
        return
    targeted = list(reply.targeted_nodes)
    print(
        f"revision {reply.revision}: {len(targeted)} node(s) targeted"
        f"{': ' + ', '.join(targeted) if targeted else ' (no catalog changes)'}"
    )
    if reply.delivered_nodes:
        print(f"  delivered (acknowledged): {', '.join(reply.delivered_nodes)}")
    if reply.undelivered_nodes:
        print(
            f"  not delivered yet: {', '.join(reply.undelivered_nodes)} (not connected, or no "
            f"acknowledgement within {wait:g} s; they get revision {reply.revision} "
            "when they connect)"
        )
    for node, why in sorted(reply.refused_nodes.items()):
        print(f"  REFUSED by {node}: {why}")
    for r in reply.purging:
        print(f"  removing {r.resource_id} (purge) on {len(r.nodes)} node(s): {', '.join(r.nodes)}")
    for r in reply.released:
        print(
            f"  no longer managed (left as it is): {r.resource_id} on {len(r.nodes)} node(s): "
            f"{', '.join(r.nodes)}"
        )


def _nodes(args: argparse.Namespace) -> int:
    request = pb.ListNodesRequest(removed=args.all, target=args.target)
    reply = _stub(args).ListNodes(request, timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.nodes(reply))
    if args.target and not reply.nodes:
        print(f"no enrolled node matches {args.target!r}", file=sys.stderr)
    _table(
        ["NODE", "LABELS", "STATE", "LAST SEEN", "REVISION", "COMPLIANCE", "NOT COMPLIANT"],
        [
            [
                n.name,
                _labels(n.labels),
                n.state.replace("_", " ") or _connected(n),
                _ago(n.last_seen),
                f"{n.applied_revision}/{n.latest_revision}"
                + (f" (kept at {n.kept_revision})" if n.kept_revision else ""),
                f"{_percent(n.compliance)} ({_fraction(n.summary)})" if n.summary.expected else "-",
                "no catalog" if n.catalog_problem else _not_compliant(n.summary),
            ]
            for n in reply.nodes
        ],
    )
    for n in reply.nodes:
        if n.catalog_problem:
            print(f"\n{n.name}: no catalog at revision {n.latest_revision}:", file=sys.stderr)
            print(_indented(n.catalog_problem), file=sys.stderr)
        if abs(n.clock_offset_s) > CLOCK_WARN_S:  # NaN (not known) compares False
            way = "ahead of" if n.clock_offset_s > 0 else "behind"
            print(
                f"{n.name}: its clock is {abs(n.clock_offset_s):.0f} s {way} the server's "
                "(reports are ordered by its sequence numbers, not by its clock; check NTP)",
                file=sys.stderr,
            )
    for n in reply.nodes:
        if n.revoked_at and not n.decommissioned_at:
            print(
                f"{n.name}: its certificate was revoked at {_when(n.revoked_at)}: "
                "it cannot connect until it is enrolled again",
                file=sys.stderr,
            )
        for c in n.conditions:
            as_of = "" if n.connected else " (as it last said)"
            print(f"{n.name}: {c.detail} (since {_when(c.since)}){as_of}", file=sys.stderr)
    losses = [(n.name, x) for n in reply.nodes for x in n.losses]
    if losses:
        print(file=sys.stderr)
    for name, x in losses:
        print(f"{name} lost {_lost(x)}", file=sys.stderr)
    return 0


def _connected(n: pb.Node) -> str:
    if n.decommissioned_at:
        return "removed"
    if n.revoked_at:
        return "revoked"
    return "yes" if n.connected else "no"


def _node_revoke(args: argparse.Namespace) -> int:
    request = pb.RevokeNodeRequest(node_name=args.name)
    reply = _on_node(lambda: _stub(args).RevokeNode(request, timeout=TIMEOUT_S))
    if args.json:
        return _print_json(cliviews.node_revoked(reply))
    if reply.already_revoked:
        print(
            f"node {reply.node_name} was already revoked at {_when(reply.revoked_at)} "
            f"(certificate serial {reply.cert_serial}): nothing changed"
        )
        return 0
    ended = "; its session was ended" if reply.sessions_ended else ""
    print(
        f"revoked node {reply.node_name} (certificate serial {reply.cert_serial}){ended}: "
        "it cannot connect until it is enrolled again"
    )
    return 0


def _node_rm(args: argparse.Namespace) -> int:
    request = pb.RemoveNodeRequest(node_name=args.name)
    reply = _on_node(lambda: _stub(args).RemoveNode(request, timeout=TIMEOUT_S))
    if args.json:
        return _print_json(cliviews.node_removed(reply))
    if reply.already_removed:
        print(
            f"node {reply.node_name} was already removed at "
            f"{_when(reply.decommissioned_at)}: nothing changed"
        )
        return 0
    ended = ", its session ended" if reply.sessions_ended else ""
    print(
        f"removed node {reply.node_name} (certificate serial {reply.cert_serial} revoked"
        f"{ended}): no longer in 'plumb nodes' or compliance; its reports and drift events "
        "stay ('plumb nodes --all' lists it)"
    )
    return 0


def _on_node(call: Callable[[], R]) -> R:
    """An Admin call about one node: no such node is the operator's to fix (exit 1, one line)."""
    try:
        return call()
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
            raise CLIError(str(exc.details())) from None
        raise


def _lost(x: pb.StateLoss) -> str:
    """``12 spooled reports at 2026-12-01 22:10:03 (spool.db was damaged ...)``."""
    reported = ""
    if x.received_at - x.at > 60:  # found while the server was away, or the clocks differ
        reported = f", reported {_when(x.received_at)}"
    phrase = cliviews.loss_phrase(x.what, None if x.count < 0 else x.count)
    return f"{phrase} at {_when(x.at)}{reported} ({x.detail})"


def _report(args: argparse.Namespace) -> int:
    request = pb.GetReportRequest(node_name=args.node, run_id=args.run)
    reply = _on_node(lambda: _stub(args).GetReport(request, timeout=TIMEOUT_S))
    if reply.catalog_problem and not args.json:
        print(
            f"node {args.node} has no catalog at revision {reply.latest_revision}:\n"
            f"{_indented(reply.catalog_problem)}\n",
            file=sys.stderr,
        )
    if not reply.found:
        raise CLIError(f"no report from node {args.node!r} yet")
    if args.json:
        return _print_json(cliviews.report(reply, args.node))
    r = reply.report
    print(
        f"node {r.node_name}, revision {r.revision}, {cliviews.trigger_word(r.trigger)} "
        f"run{' (noop)' if r.noop else ''} finished {_when(r.finished_at)} "
        f"in {r.finished_at - r.started_at:.3f}s"
    )
    _table(
        ["RESOURCE", "MANIFEST", "STATUS", "DETAIL"],
        [
            [res.id, res.manifest, cliviews.status_word(res.status), _detail(res)]
            for res in r.results
        ],
    )
    for res in r.results:
        _print_diffs(res.id, res.changes)
    return 0


def _runs(args: argparse.Namespace) -> int:
    request = pb.ListRunsRequest(node_name=args.node, since=args.since or 0, limit=args.limit)
    reply = _stub(args).ListRuns(request, timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.runs(reply, args.node))
    _table(
        ["RUN", "FINISHED", "TRIGGER", "REVISION", "DURATION", "RESULT"],
        [
            [
                r.id,
                _when(r.finished_at),
                cliviews.trigger_word(r.trigger) + (" (noop)" if r.noop else ""),
                str(r.revision),
                f"{r.finished_at - r.started_at:.3f}s",
                cliviews.counts_phrase(dict(r.counts)) or "no resources",
            ]
            for r in reply.runs
        ],
    )
    if not reply.runs:
        print(f"no runs of node {args.node!r} reported", file=sys.stderr)
    elif reply.more:
        print(f"(older runs left out: --limit {args.limit})", file=sys.stderr)
    return 0


def _detail(result: pb.ResourceResult) -> str:
    """Changes, then the error, then what the resource looks like now (key=value ...)."""
    parts = [f"{c.field}: {c.observed} → {c.desired}" for c in result.changes]
    if result.error:
        parts.append(result.error)
    if result.observed:
        parts.append(_pairs(result.observed))
    return "; ".join(parts)


def _pairs(values: Mapping[str, str]) -> str:
    """``key=value`` pairs in key order; a value that would not read as one word is quoted."""
    return " ".join(f"{key}={_word(value)}" for key, value in sorted(values.items()))


def _word(value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    return json.dumps(value, ensure_ascii=False)


_BARE = re.compile(r'[^\s";=]+')


def _drift(args: argparse.Namespace) -> int:
    request = pb.ListDriftRequest(
        node_name=args.node,
        limit=args.limit,
        kind=args.kind,
        manifest=args.manifest,
        control=args.control,
        since=args.since or 0,
        unrepaired=args.unrepaired,
    )
    reply = _stub(args).ListDrift(request, timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.drift(reply))
    _table(
        ["WHEN", "NODE", "RESOURCE", "STATUS", "CHANGES"],
        [
            [
                _when(e.detected_at),
                e.node_name,
                e.resource_id,
                cliviews.status_word(e.status),
                "; ".join(f"{c.field}: {c.observed} → {c.desired}" for c in e.changes),
            ]
            for e in reply.events
        ],
    )
    for e in reply.events:
        _print_diffs(f"{_when(e.detected_at)} {e.node_name} {e.resource_id}", e.changes)
    return 0


def _print_diffs(what: str, changes: Sequence[pb.Change]) -> None:
    """The text diffs of small files' content changes, after the table that names them."""
    for c in changes:
        if c.diff:
            print(f"\n{what} ({c.field}):")
            print(_indented(c.diff.rstrip("\n")))


def _compliance(args: argparse.Namespace) -> int:
    request = pb.GetComplianceRequest(by=args.by or "", target=args.target)
    stub = _stub(args)
    reply = stub.GetCompliance(request, timeout=TIMEOUT_S)
    if args.format in ("csv", "html", "junit"):
        print(_export(args, stub, reply), end="")
    elif args.json or args.format == "json":
        _print_json(cliviews.compliance(reply, reply.revision))
    else:
        print(f"compliance at revision {reply.revision or '-'} (of every resource expected)")
        rows = [
            [
                r.scope,
                r.name,
                _fraction(r),
                _percent(r.percent),
                _percent(r.percent_with_waivers) if r.counts.get("waived") else "-",
                _not_compliant(r),
            ]
            for r in [*reply.rows, reply.fleet]
        ]
        _table(["SCOPE", "NAME", "COMPLIANT", "PERCENT", "WITH WAIVERS", "NOT COMPLIANT"], rows)
    # Waived results are accepted: only what is neither compliant nor waived fails.
    waived = reply.fleet.counts.get("waived", 0)
    return 0 if reply.fleet.compliant + waived == reply.fleet.expected else 3


def _export(args: argparse.Namespace, stub: Any, reply: pb.GetComplianceResponse) -> str:
    query = ["plumb", "compliance", "--format", args.format]
    query += ["--by", args.by] if args.by else []
    query += ["--target", args.target] if args.target else []
    drift = stub.ListDrift(pb.ListDriftRequest(limit=EXPORT_DRIFT_EVENTS), timeout=TIMEOUT_S)
    evidence = export.Evidence(reply, list(drift.events), shlex.join(query), time.time())
    writer = {"csv": export.to_csv, "html": export.to_html, "junit": export.to_junit}
    return writer[args.format](evidence)


def _fraction(row: pb.ComplianceRow) -> str:
    return f"{row.compliant}/{row.expected}" if row.expected else "-"


def _not_compliant(row: pb.ComplianceRow) -> str:
    return cliviews.counts_phrase(dict(row.counts), leave_out=("in_sync", "repaired")) or "-"


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# ------------------------------------------------------------------ operators, audit


def _operator_add(args: argparse.Namespace) -> int:
    if not operators.valid_name(args.name):
        raise CLIError(f"invalid operator name {args.name!r}: {operators.NAME_RULE}")
    out: Path = args.out or Path(f"plumb-operator-{args.name}")
    try:
        operators.check_out_dir(out)
    except PlumbServerError as exc:
        raise CLIError(str(exc)) from None
    config = load_config(args.config)
    key = generate_key()  # here: only the certificate request goes to the server
    request = pb.AddOperatorRequest(
        name=args.name, role=args.role, csr_pem=operators.certificate_request(key, args.name)
    )
    reply = _stub(args).AddOperator(request, timeout=TIMEOUT_S)
    path = operators.write_config(
        out, args.server or config.server, key_pem(key), reply.certificate_pem, reply.ca_pem
    )
    if args.json:
        return _print_json(cliviews.operator_added(reply, str(path)))
    o = reply.operator
    print(
        f"operator {o.name!r} ({o.role}) added, certificate serial {o.cert_serial}: "
        f"its CLI config is {path}"
    )
    print(
        f"{out} holds its key: give the directory to {o.name} (keep it private), who uses it "
        f"with: export PLUMB_CONFIG=<where it is>/{operators.CONFIG}",
        file=sys.stderr,
    )
    return 0


def _operator_renew(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        cert = x509.load_pem_x509_certificate(config.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read the operator's certificate: {exc}") from exc
    [name] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    key = generate_key()  # here: only the certificate request goes to the server
    request = pb.RenewOperatorRequest(csr_pem=operators.certificate_request(key, str(name.value)))
    reply = _stub(args).RenewOperator(request, timeout=TIMEOUT_S)
    try:
        replace_pair(config.key, config.cert, key_pem(key), reply.certificate_pem)
        if reply.trusted_ca_pem:  # what the server trusts now (a CA rollover: server/ca.py)
            write_private(config.ca, reply.trusted_ca_pem)
    except OSError as exc:
        raise CLIError(
            f"the server renewed the certificate but it cannot be saved ({exc}): the old one "
            "is refused now; an admin can add this operator again"
        ) from exc
    renewed = x509.load_pem_x509_certificate(reply.certificate_pem)
    not_after = renewed.not_valid_after_utc.timestamp()
    if args.json:
        return _print_json(cliviews.operator_renewed(reply, not_after))
    o = reply.operator
    print(
        f"operator {o.name!r}: certificate renewed, serial {o.cert_serial} until "
        f"{_when(not_after)} (written to {config.cert}); serial {reply.replaced_serial} "
        "is refused from now on"
    )
    return 0


def _operator_list(args: argparse.Namespace) -> int:
    reply = _stub(args).ListOperators(pb.ListOperatorsRequest(all=args.all), timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.operators(reply))
    for line in cliviews.operator_table(reply.operators):
        print(line)
    return 0


def _operator_revoke(args: argparse.Namespace) -> int:
    request = pb.RevokeOperatorRequest(name=args.name)
    reply = _on_node(lambda: _stub(args).RevokeOperator(request, timeout=TIMEOUT_S))
    if args.json:
        return _print_json(cliviews.operator_revoked(reply))
    o = reply.operator
    if reply.already_revoked:
        print(f"operator {o.name!r} was already revoked at {_when(o.revoked_at)}: nothing changed")
    else:
        print(f"revoked operator {o.name!r} ({o.role}): its next call is refused")
    return 0


def _audit(args: argparse.Namespace) -> int:
    stub = _stub(args)
    if args.verify:
        check = stub.VerifyAudit(pb.VerifyAuditRequest(), timeout=TIMEOUT_S * 4)
        if args.json:
            _print_json(cliviews.audit_check(check))
        elif check.intact and check.head_id:
            print(
                f"audit log intact: {check.entries} entries; head: entry {check.head_id}, "
                f"sha256 {check.head_hash} (note it: a log rewritten whole would not have it)"
            )
        elif check.intact:
            print("audit log intact: no entries yet")
        else:
            print(
                f"audit log BROKEN at entry {check.broken_at}: {check.problem} "
                f"({check.entries} entries read)"
            )
        return 0 if check.intact else 1
    request = pb.ListAuditRequest(since=args.since or 0.0, limit=args.limit)
    reply = stub.ListAudit(request, timeout=TIMEOUT_S)
    if args.json:
        return _print_json(cliviews.audit(reply))
    _table(
        ["ID", "WHEN", "WHO", "FROM", "ACTION", "RESULT", "DETAILS"],
        [
            [
                str(e.id),
                _when(e.at),
                f"{e.actor_kind} {e.actor}" + (f" ({e.role})" if e.role else ""),
                e.peer,
                e.action,
                e.result,
                _audit_details(e),
            ]
            for e in reply.entries
        ],
    )
    if reply.more:
        print(f"(older entries left out: --limit {args.limit}; see --since)", file=sys.stderr)
    elif not reply.entries:
        print("no audit entries" + (" since then" if args.since else ""), file=sys.stderr)
    return 0


def _audit_details(e: pb.AuditEntry) -> str:
    """``revision=5 files=web.yaml``, then the reason when not ok."""
    details = json.loads(e.details_json or "{}")
    if isinstance(details.get("files"), list):  # a push: its files by path
        details["files"] = [str(f.get("path")) for f in details["files"]]
    pairs = " ".join(
        f"{key}={_detail_value(key, value)}"
        for key, value in details.items()
        if value not in (None, [], {})
    )
    return "; ".join(part for part in (pairs, e.reason) if part)


def _detail_value(key: str, value: Any) -> str:
    if key.endswith("_at") and isinstance(value, int | float):
        return _word(_when(value))
    if isinstance(value, list):
        return _word(",".join(str(v) for v in value))
    if isinstance(value, dict):
        return _word(",".join(f"{k}={v}" for k, v in value.items()))
    return _word(value if isinstance(value, str) else json.dumps(value))


# ------------------------------------------------------------------ output


def _print_json(shape: Mapping[str, Any]) -> int:
    print(json.dumps(shape, indent=2, sort_keys=True, ensure_ascii=False))
    return 0


def _table(headers: list[str], rows: list[list[str]]) -> None:
    for line in cliviews.table(headers, rows):
        print(line)


def _labels(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _percent(value: float) -> str:
    return "-" if value < 0 else f"{value:.1f}%"


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
    except (OverflowError, OSError, ValueError):  # not a time this host can show
        return f"{timestamp!r} (not a time)"


def _ago(timestamp: float, now: Callable[[], float] = time.time) -> str:
    if not timestamp:
        return "never"
    seconds = max(0, int(now() - timestamp))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def run() -> NoReturn:
    """The command as a program: main(), then out without the interpreter's teardown.

    gRPC leaves daemon threads behind (a stream's request consumer, the
    channel's poller). The interpreter stops them wherever they are at exit;
    one stopped while holding a call's lock makes finalising that call wait
    for ever, and the process never ends (seen with the agent's run --once).
    The CLI keeps nothing of its own; stdio is flushed here.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
