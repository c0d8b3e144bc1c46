"""What ``plumb ... --json`` prints: one stable, documented shape per command.

Scripts read these, so they follow three rules, whatever the wire looks
like: numbers are JSON numbers (revisions, counts, times as Unix seconds),
anything missing is ``null`` (never ``0``, ``-1`` or ``""``), and statuses
and triggers are the lower-case words used everywhere else (``in_sync``,
``repaired``, ``drifted``, ``failed``, ``skipped``, ``unknown``; compliance
adds ``pending`` and ``no_catalog``; triggers ``push``, ``schedule``,
``manual``, ``start``, ``watch``). The shapes, by command:

``push``::

    {"revision": 5 | null, "unchanged": false,
     "errors": [{"file": "web.yaml" | null, "line": 7 | null, "field": "..." | null,
                 "message": "..."}],
     "targeted": ["web-1", ...], "delivered": [...], "undelivered": [...],
     "refused": {"web-2": "why"}, "unmatched_names": ["db-9"],
     "unmatched_manifests": ["db"], "released": {"file/old": ["web-1"]},
     "purging": {"package/telnet": ["web-1", "web-2"]}}

``manifest rm NAME`` and ``rollback`` print the same shape. ``unmatched_manifests``:
pushed manifests whose target selects no enrolled node; ``released``: resources
that leave nodes' catalogs and are left as they are; ``purging``: resources the
nodes' agents remove (``manifest rm --purge``).

``plan [FILE...]`` (and ``push --plan-first --json``, before it asks)::

    {"base_revision": 5 | null, "unchanged": false, "errors": [...as push],
     "resources": [{"resource": "file/app-conf", "changing": 37,
                    "fields": {"content": 37, "mode": 2},
                    "statuses": {"drifted": 37, "in_sync": 3, "unknown": 1}}],
     "nodes": [{"node": "web-1", "results": [{"resource": "file/app-conf",
                "status": "drifted" | "unknown" | "failed" | ...,
                "changes": [{"field": "content", "observed": "sha256:...",
                             "desired": "sha256:...", "diff": "--- ...\n" | null}],
                "error": null}]}],
     "no_answer": ["web-7"], "offline": ["web-9"], "refused": {"web-3": "why"}}

``resources`` leaves out what is in sync everywhere; in ``nodes`` only what
would change (``drifted``), fail or is not known (``unknown``: it depends on
an earlier change in the same dry run) is listed.

``rollout status`` (and ``rollout resume | abort | rollback``, which add
``"rollback": PUSH | null``, the revision a rollback made)::

    {"rollout": {"id": 3, "revision": 7, "previous_revision": 6,
                 "state": "running" | "paused" | "halted" | "done" | "aborted",
                 "kind": "push" | "rollback", "current": true,
                 "settings": {"canary": "1" | null, "batch": "25%" | null,
                              "max_failures": "0", "batch_timeout_s": 300.0,
                              "pause_after_canary": false},
                 "max_failures": 0, "failed": 1, "author": "alice" | null,
                 "created_at": ..., "updated_at": ..., "reason": "..." | null,
                 "nodes": [{"node": "web-1", "batch": 0,
                            "state": "waiting" | "sent" | "succeeded" | "failed",
                            "reason": "..." | null, "sent_at": ... | null,
                            "finished_at": ... | null}]} | null}

``current`` is false once a newer revision replaced the rollout's (it keeps
no node on its previous revision then). ``push`` adds ``"rollout": 3 | null``.

``runs NODE``::

    {"node": "web-1", "more": false,
     "runs": [{"id": "...", "revision": 5, "noop": false, "trigger": "watch",
               "started_at": ..., "finished_at": ..., "received_at": ...,
               "duration_s": 0.004, "sequence": 42 | null,
               "counts": {"repaired": 1, "in_sync": 99}}]}

newest first (by the agent's sequence numbers); ``started_at`` and
``finished_at`` are the agent's clock, ``received_at`` the server's; ``more``:
older runs matched but ``--limit`` left them out. ``report NODE --run ID``
prints that run in the ``report`` shape.

``manifests``::

    {"revision": 5 | null, "purging": ["old-app"],
     "manifests": [{"name": "web", "file": "web.yaml", "target": "role=web",
                    "mode": "enforce", "resources": 3, "nodes": ["web-1"],
                    "changed_in": 4, "changed_at": 1764620000.5, "author": "alice" | null}]}

``history [NAME]``::

    {"revisions": [{"revision": 5, "created_at": ..., "author": "alice" | null,
                    "message": "..." | null, "origin": "push" | "remove" | "rollback",
                    "content_sha256": "...", "added": [...], "changed": [...],
                    "removed": [...], "purged": [...]}]}

``diff OLD [NEW]``::

    {"old": 4, "new": 5, "manifests": [{"name": "web", "change": "changed",
                                        "diff": "--- a/web.yaml\n+++ b/web.yaml\n..."}],
     "resources": [{"resource": "file/motd", "change": "added" | "removed" | "changed",
                    "fields": ["content"], "nodes": ["web-1"]}]}

``label NODE``::

    {"node": "web-1", "labels": {...}, "matched_before": ["base"],
     "matched_after": ["base", "web"], "revision": 5 | null, "delivered": true,
     "refused": "why" | null, "catalog_problem": "..." | null}

``nodes``::

    {"nodes": [{"name": "web-1", "labels": {...}, "connected": true,
                "last_seen": 1764620000.5 | null, "enrolled_at": 1764610000.0,
                "applied_revision": 5 | null, "reported_revision": 5 | null,
                "latest_revision": 5 | null, "catalog_problem": "..." | null,
                "clock_offset_s": 0.004 | null, "compliance": COMPLIANCE,
                "losses": [LOSS, ...], "conditions": [CONDITION, ...],
                "cert_serial": "5f3a09...", "revoked_at": 1764620000.5 | null,
                "decommissioned_at": 1764620000.5 | null,
                "enrolled_by_token": "0a1b2c3d" | null,
                "cert_not_after": 1772390000.0 | null, "next_cert_serial": "77c1..." | null}]}

where ``LOSS`` is what the node reported losing of its own state (a damaged
report spool it set aside, a cached catalog that did not verify), newest
first, ``[]`` when nothing: ``{"what": "spooled_reports" | "cached_catalog",
"count": 12 | null, "at": 1764620000.5, "received_at": 1764620001.0,
"detail": "spool.db was damaged (...); kept as spool.db.damaged-..."}``;
``at`` is when the agent found it (its clock), ``received_at`` when the
server recorded it (the server's). ``CONDITION`` is what the node's agent
last said is wrong with it now (agent/conditions.py), ``[]`` when nothing:
``{"name": "state_dir_unwritable" | "watch_polling" | "certificate_renewal" | "audit_lock",
"detail": "...", "since": 1764620000.5 | null}`` (``since``: the agent's clock;
``audit_lock``: the host's audit lock is on, nothing is enforced there); for a node
not connected, as it last said. ``cert_serial`` is the one certificate the
node may use (lower-case hex); ``revoked_at`` when it was revoked (``plumb node
revoke``: the node cannot connect until enrolled again), ``decommissioned_at``
when the node was removed (``plumb node rm``; only ``nodes --all`` lists
those, with a compliance of nothing expected). ``enrolled_by_token`` is the
id of the token its current certificate was enrolled with (``null``: enrolled
before Plumb recorded it). ``cert_not_after`` is when that certificate
expires (``null``: issued before Plumb recorded it); ``next_cert_serial`` a
renewed certificate issued and not used yet (the agent's next session opens
with it, and the old one is refused from then on); ``cert_issuer`` the key
identifier of the CA that issued the certificate (``plumb-server ca status``
names the CAs). ``facts`` is what its agent last said of its host
(protos/facts.py lists the keys); ``kept_revision`` the revision a staged
rollout keeps it on until its batch comes (``null``: none does). ``state`` is
the first that holds of ``removed``, ``revoked``, ``no_report`` (its agent
runs by itself every ``run_interval_s`` and sent no run report for
``no_report_after_runs`` (server.toml, default 3) times that: its catalog
counts as ``no_report`` in compliance, never as compliant), ``pending`` (it
has not reported the latest revision), ``connected``, ``disconnected``;
``last_report_at`` is when its newest run ended (the server's clock).

``node revoke NAME``::

    {"node": "web-1", "cert_serial": "5f3a09...", "revoked_at": 1764620000.5,
     "already_revoked": false, "sessions_ended": 1}

``node rm NAME``::

    {"node": "web-1", "cert_serial": "5f3a09...", "decommissioned_at": 1764620000.5,
     "already_removed": false, "sessions_ended": 1}

``revoked_at`` / ``decommissioned_at`` are the first time, when it already was
(``already_*`` true: nothing changed); ``sessions_ended`` is how many live
sessions of the node were ended (0 or 1).

``report NODE``::

    {"node": "web-1", "id": "...", "revision": 5, "noop": false, "trigger": "push",
     "started_at": ..., "finished_at": ..., "duration_s": 0.12,
     "latest_revision": 5 | null, "catalog_problem": "..." | null,
     "results": [{"id": "file/motd", "kind": "file", "name": "motd", "manifest": "web",
                  "status": "repaired", "drift": false, "error": "..." | null,
                  "changes": [{"field": "mode", "observed": "0644", "desired": "0600",
                               "diff": null}],
                  "duration_s": 0.003, "controls": ["CIS-1.1"], "observed": {...}}]}

A change's ``diff`` is ``diff -u`` of a small text file's content (observed
-> desired; up to 500 lines, UTF-8); ``null`` for anything else, and always
for a resource marked sensitive. ``drift`` events carry the same changes.

``drift``::

    {"events": [{"id": 12, "node": "web-1", "resource": "file/motd", "manifest": "web",
                 "status": "repaired", "changes": [...], "detected_at": ...,
                 "report_id": "..."}]}

``compliance``::

    {"revision": 5 | null, "fleet": COMPLIANCE, "rows": [COMPLIANCE, ...]}

where ``COMPLIANCE`` is ``{"scope": "node" | "manifest" | "control" | "kind" |
"fleet", "name": "...", "compliant": 2, "expected": 3, "percent": 66.67 | null,
"percent_with_waivers": 100.0 | null, "counts": {"in_sync": 2, "waived": 1}}``
(``percent`` counts waived results as not compliant, ``percent_with_waivers``
as compliant; the exit code is 3 unless everything is one or the other).

``waiver add | revoke`` print ``WAIVER``, ``waiver list`` ``{"waivers": [WAIVER, ...]}``,
where ``WAIVER`` is ``{"id": 3, "control": "CIS-1.1" | null, "resource":
"file/motd" | null, "target": "role=legacy" | null, "reason": "...",
"approver": "alice", "created_at": ..., "expires_at": ..., "revoked_at": ... |
null, "state": "active" | "expired" | "revoked"}``.

``token create``::

    {"id": "0a1b2c3d", "token": "plumb1....", "expires_at": ..., "uses": 5,
     "enroll_address": "h:8444", "names": ["db-2", "db-3"] | null,
     "name_pattern": "web-*" | null, "reenroll": false, "install_command": "..." | null}

``names`` and ``name_pattern`` are the token's binding (at most one is set;
both ``null``: any name not targeted by name). ``install_command`` is the line
to paste on a node (with ``--install-command``); it passes the token on the
agent's standard input.

``token list``::

    {"tokens": [TOKEN, ...]}

``token revoke ID``::

    {"token": TOKEN, "already_revoked": false}

where ``TOKEN`` is a token without its secret: ``{"id": "0a1b2c3d",
"labels": {...}, "names": [...] | null, "name_pattern": "..." | null,
"reenroll": false, "created_at": ..., "expires_at": ..., "uses": 5, "used": 2,
"uses_left": 3, "revoked_at": 1764620000.5 | null, "state": "valid" |
"expired" | "used_up" | "revoked", "nodes": ["web-1", ...]}`` (``nodes``:
those whose current certificate it enrolled).

``node reenroll NAME``::

    {"node": "db-2", "id": "...", "token": "plumb1....", "expires_at": ..., "uses": 1,
     "enroll_address": "h:8444", "names": ["db-2"], "name_pattern": null,
     "reenroll": true, "enroll_command": "printf ... | plumb-agent enroll ... --replace"}

``operator add NAME`` (``plumb``), ``operator list``, ``operator revoke NAME``
(``plumb`` and ``plumb-server``)::

    {"operator": OPERATOR, "config": "/home/alice/plumb/cli.toml"}
    {"operators": [OPERATOR, ...]}
    {"operator": OPERATOR, "already_revoked": false}

where ``OPERATOR`` is ``{"name": "alice", "role": "viewer" | "operator" |
"admin", "cert_serial": "5f3a09...", "created_at": 1764620000.5,
"revoked_at": 1764620000.5 | null, "state": "current" | "revoked"}``
(``cert_serial``: the one certificate it may use; ``config``: the cli.toml
written, with the key beside it).

``audit``::

    {"entries": [ENTRY, ...], "more": false}

oldest first; ``more``: older entries matched but ``--limit`` left them out.
``ENTRY`` is ``{"id": 12, "at": 1764620000.5, "actor_kind": "operator" |
"node" | "token" | "local" | "server", "actor": "alice", "role": "admin" |
null, "peer": "10.0.0.5:53211" | "local", "action": "Push", "details": {...},
"result": "ok" | "refused" | "failed", "reason": "..." | null, "revision": 5 |
null, "prev_hash": "...", "hash": "..."}``: ``actor`` is the operator's or
node's name, the enrolling token's id (``token``), the local user
(``local``: a ``plumb-server`` command on the server host); ``role`` the
operator's role at the time; ``details`` a summary of the arguments (never a
secret; a push's files by path, size and SHA-256); ``revision`` the revision a
push stored.

``audit --verify``::

    {"intact": true, "entries": 42, "head": {"id": 42, "hash": "..."} | null,
     "broken_at": 7 | null, "problem": "entry 7 was changed after ..." | null}

``head`` is the log's last entry (``null``: empty): keep its hash elsewhere to
tell later that the log was not rewritten whole.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from protos import plumb_pb2 as pb
from server import plan as plan_


def status_word(status: int) -> str:
    """A wire status as everyone else says it: ``pb.IN_SYNC`` → ``in_sync``.

    ``unknown`` for a number no agent sends (a report from a newer or a broken one).
    """
    return str(pb.Status.Name(status)).lower() if status in pb.Status.values() else "unknown"


def trigger_word(trigger: int) -> str:
    """``push``, ``watch``, ...; ``unspecified`` for a number no agent sends."""
    known = trigger in pb.Trigger.values()
    return str(pb.Trigger.Name(trigger)).lower() if known else "unspecified"


def push(reply: pb.PushResponse) -> dict[str, Any]:
    return {
        "revision": reply.revision or None,
        "unchanged": reply.unchanged,
        "errors": errors(reply.errors),
        "targeted": list(reply.targeted_nodes),
        "delivered": list(reply.delivered_nodes),
        "undelivered": list(reply.undelivered_nodes),
        "refused": dict(sorted(reply.refused_nodes.items())),
        "unmatched_names": list(reply.unmatched_names),
        "unmatched_manifests": list(reply.unmatched_manifests),
        "released": {r.resource_id: list(r.nodes) for r in reply.released},
        "purging": {r.resource_id: list(r.nodes) for r in reply.purging},
        "rollout": reply.rollout_id or None,
    }


def plan(reply: pb.PlanResponse) -> dict[str, Any]:
    summary = plan_.summarize(reply.answered)
    return {
        "base_revision": reply.base_revision or None,
        "unchanged": reply.unchanged,
        "errors": errors(reply.errors),
        "resources": [
            {
                "resource": s.resource_id,
                "changing": s.changing,
                "fields": s.fields,
                "statuses": s.statuses,
            }
            for s in summary
        ],
        "nodes": [
            {
                "node": n.node_name,
                "results": [
                    {
                        "resource": r.id,
                        "status": status_word(r.status),
                        "changes": [
                            {
                                "field": c.field,
                                "observed": c.observed,
                                "desired": c.desired,
                                "diff": c.diff or None,
                            }
                            for c in r.changes
                        ],
                        "error": r.error or None,
                    }
                    for r in plan_.changed_results(n)
                ],
            }
            for n in reply.answered
        ],
        "no_answer": list(reply.no_answer),
        "offline": list(reply.offline),
        "refused": dict(sorted(reply.refused.items())),
    }


def errors(items: Sequence[pb.ManifestError]) -> list[dict[str, Any]]:
    return [
        {
            "file": e.file or None,
            "line": e.line or None,
            "field": e.field or None,
            "message": e.message,
        }
        for e in items
    ]


def rollout(r: pb.RolloutInfo) -> dict[str, Any]:
    if not r.id:
        return {"rollout": None}
    settings = r.settings
    return {
        "rollout": {
            "id": r.id,
            "revision": r.revision,
            "previous_revision": r.previous_revision,
            "state": r.state,
            "kind": r.kind,
            "current": r.current,
            "settings": {
                "canary": settings.canary or None,
                "batch": settings.batch or None,
                "max_failures": settings.max_failures or None,
                "batch_timeout_s": settings.batch_timeout_s or None,
                "pause_after_canary": settings.pause_after_canary,
            },
            "max_failures": r.max_failures,
            "failed": sum(1 for n in r.nodes if n.state == "failed"),
            "author": r.author or None,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
            "reason": r.reason or None,
            "nodes": [
                {
                    "node": n.node_name,
                    "batch": n.batch,
                    "state": n.state or None,
                    "reason": n.reason or None,
                    "sent_at": n.sent_at or None,
                    "finished_at": n.finished_at or None,
                }
                for n in r.nodes
            ],
        }
    }


def steered(reply: pb.SteerRolloutResponse) -> dict[str, Any]:
    shape = rollout(reply.rollout)
    shape["rollback"] = push(reply.rollback) if reply.HasField("rollback") else None
    return shape


def runs(reply: pb.ListRunsResponse, node_name: str) -> dict[str, Any]:
    return {
        "node": node_name,
        "runs": [
            {
                "id": r.id,
                "revision": r.revision,
                "noop": r.noop,
                "trigger": trigger_word(r.trigger),
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "received_at": r.received_at,
                "duration_s": round(r.finished_at - r.started_at, 6),
                "sequence": r.sequence or None,
                "counts": dict(sorted(r.counts.items())),
            }
            for r in reply.runs
        ],
        "more": reply.more,
    }


def manifests(reply: pb.ListManifestsResponse) -> dict[str, Any]:
    return {
        "revision": reply.revision or None,
        "manifests": [
            {
                "name": m.name,
                "file": m.file,
                "target": m.target,
                "mode": m.mode,
                "resources": m.resources,
                "nodes": list(m.nodes),
                "changed_in": m.changed_in,
                "changed_at": m.changed_at,
                "author": m.author or None,
            }
            for m in reply.manifests
        ],
        "purging": list(reply.purging),
    }


def history(reply: pb.ListRevisionsResponse) -> dict[str, Any]:
    return {
        "revisions": [
            {
                "revision": r.revision,
                "created_at": r.created_at,
                "author": r.author or None,
                "message": r.message or None,
                "origin": r.origin,
                "content_sha256": r.content_sha256,
                "added": list(r.added),
                "changed": list(r.changed),
                "removed": list(r.removed),
                "purged": list(r.purged),
            }
            for r in reply.revisions
        ]
    }


def revision_changes(r: pb.RevisionInfo) -> str:
    """``+web ~base -old !gone``: added, changed, removed, purged manifests."""
    marks = (("+", r.added), ("~", r.changed), ("-", r.removed), ("!", r.purged))
    return " ".join(f"{mark}{name}" for mark, names in marks for name in names)


def diff(reply: pb.DiffRevisionsResponse) -> dict[str, Any]:
    return {
        "old": reply.old,
        "new": reply.new,
        "manifests": [
            {"name": m.name, "change": m.change, "diff": m.unified} for m in reply.manifests
        ],
        "resources": [
            {
                "resource": r.resource_id,
                "change": r.change,
                "fields": list(r.fields),
                "nodes": list(r.nodes),
            }
            for r in reply.resources
        ],
    }


def labels(reply: pb.SetLabelsResponse) -> dict[str, Any]:
    return {
        "node": reply.node_name,
        "labels": dict(sorted(reply.labels.items())),
        "matched_before": list(reply.matched_before),
        "matched_after": list(reply.matched_after),
        "revision": reply.revision or None,
        "delivered": reply.delivered,
        "refused": reply.refused or None,
        "catalog_problem": reply.catalog_problem or None,
    }


def compliance_row(row: pb.ComplianceRow) -> dict[str, Any]:
    return {
        "scope": row.scope,
        "name": row.name,
        "compliant": row.compliant,
        "expected": row.expected,
        "percent": None if row.percent < 0 else round(row.percent, 2),
        "percent_with_waivers": (
            None if row.percent_with_waivers < 0 else round(row.percent_with_waivers, 2)
        ),
        "counts": dict(row.counts),
    }


def waiver(w: pb.WaiverInfo) -> dict[str, Any]:
    return {
        "id": w.id,
        "control": w.control or None,
        "resource": w.resource_id or None,
        "target": w.target or None,
        "reason": w.reason,
        "approver": w.approver,
        "created_at": w.created_at,
        "expires_at": w.expires_at,
        "revoked_at": w.revoked_at or None,
        "state": w.state,
    }


def waivers(reply: pb.ListWaiversResponse) -> dict[str, Any]:
    return {"waivers": [waiver(w) for w in reply.waivers]}


def nodes(reply: pb.ListNodesResponse) -> dict[str, Any]:
    return {"nodes": [node(n) for n in reply.nodes]}


def node(n: pb.Node) -> dict[str, Any]:
    return {
        "name": n.name,
        "labels": dict(sorted(n.labels.items())),
        "connected": n.connected,
        "last_seen": n.last_seen or None,
        "enrolled_at": n.enrolled_at,
        "applied_revision": n.applied_revision or None,
        "reported_revision": n.reported_revision or None,
        "latest_revision": n.latest_revision or None,
        "catalog_problem": n.catalog_problem or None,
        "clock_offset_s": None if math.isnan(n.clock_offset_s) else round(n.clock_offset_s, 3),
        "compliance": compliance_row(n.summary),
        "losses": [loss(x) for x in n.losses],
        "conditions": [
            {"name": c.name, "detail": c.detail, "since": c.since or None} for c in n.conditions
        ],
        "cert_serial": n.cert_serial or None,
        "revoked_at": n.revoked_at or None,
        "decommissioned_at": n.decommissioned_at or None,
        "enrolled_by_token": n.enrolled_by_token or None,
        "cert_not_after": n.cert_not_after or None,
        "next_cert_serial": n.next_cert_serial or None,
        "cert_issuer": n.cert_issuer or None,
        "facts": dict(sorted(n.facts.items())),
        "kept_revision": n.kept_revision or None,
        "state": n.state,
        "last_report_at": n.last_report_at or None,
        "run_interval_s": n.run_interval_s or None,
    }


def node_revoked(reply: pb.RevokeNodeResponse) -> dict[str, Any]:
    return {
        "node": reply.node_name,
        "cert_serial": reply.cert_serial,
        "revoked_at": reply.revoked_at,
        "already_revoked": reply.already_revoked,
        "sessions_ended": reply.sessions_ended,
    }


def node_removed(reply: pb.RemoveNodeResponse) -> dict[str, Any]:
    return {
        "node": reply.node_name,
        "cert_serial": reply.cert_serial,
        "decommissioned_at": reply.decommissioned_at,
        "already_removed": reply.already_removed,
        "sessions_ended": reply.sessions_ended,
    }


def loss(x: pb.StateLoss) -> dict[str, Any]:
    return {
        "what": x.what,
        "count": None if x.count < 0 else x.count,
        "at": x.at,
        "received_at": x.received_at or None,
        "detail": x.detail,
    }


def loss_phrase(what: str, count: int | None) -> str:
    """``12 spooled reports``, ``an unknown number of spooled reports``, ``its cached catalog``."""
    if what == "cached_catalog":
        return "its cached catalog"
    noun = what.replace("_", " ")
    if count is None or count < 0:
        return f"an unknown number of {noun}"
    return f"{count} {noun[:-1] if count == 1 and noun.endswith('s') else noun}"


def report(reply: pb.GetReportResponse, node_name: str) -> dict[str, Any]:
    r = reply.report
    return {
        "node": node_name,
        "id": r.id,
        "revision": r.revision,
        "noop": r.noop,
        "trigger": trigger_word(r.trigger),
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "duration_s": round(r.finished_at - r.started_at, 6),
        "latest_revision": reply.latest_revision or None,
        "catalog_problem": reply.catalog_problem or None,
        "results": [result(x) for x in r.results],
    }


def result(x: pb.ResourceResult) -> dict[str, Any]:
    return {
        "id": x.id,
        "kind": x.kind,
        "name": x.name,
        "manifest": x.manifest,
        "status": status_word(x.status),
        "drift": x.drift,
        "error": x.error or None,
        "changes": changes(x.changes),
        "duration_s": x.duration_s,
        "controls": list(x.controls),
        "observed": dict(sorted(x.observed.items())),
    }


def changes(items: Sequence[pb.Change]) -> list[dict[str, str | None]]:
    return [
        {"field": c.field, "observed": c.observed, "desired": c.desired, "diff": c.diff or None}
        for c in items
    ]


def drift(reply: pb.ListDriftResponse) -> dict[str, Any]:
    return {
        "events": [
            {
                "id": e.id,
                "node": e.node_name,
                "resource": e.resource_id,
                "manifest": e.manifest,
                "status": status_word(e.status),
                "changes": changes(e.changes),
                "detected_at": e.detected_at,
                "report_id": e.report_id,
            }
            for e in reply.events
        ]
    }


def compliance(reply: pb.GetComplianceResponse, revision: int) -> dict[str, Any]:
    return {
        "revision": revision or None,
        "fleet": compliance_row(reply.fleet),
        "rows": [compliance_row(r) for r in reply.rows],
    }


def token(reply: pb.CreateTokenResponse, install_command: str | None) -> dict[str, Any]:
    return {**_created(reply), "install_command": install_command}


def reenroll(reply: pb.CreateTokenResponse, node_name: str, command: str) -> dict[str, Any]:
    return {"node": node_name, **_created(reply), "enroll_command": command}


def _created(reply: pb.CreateTokenResponse) -> dict[str, Any]:
    return {
        "id": reply.id or None,
        "token": reply.token,
        "expires_at": reply.expires_at,
        "uses": reply.uses,
        "enroll_address": reply.enroll_address or None,
        "names": list(reply.names) or None,
        "name_pattern": reply.name_pattern or None,
        "reenroll": reply.reenroll,
    }


def tokens(reply: pb.ListTokensResponse) -> dict[str, Any]:
    return {"tokens": [token_info(t) for t in reply.tokens]}


def revoked(reply: pb.RevokeTokenResponse) -> dict[str, Any]:
    return {"token": token_info(reply.token), "already_revoked": reply.already_revoked}


def token_info(t: pb.TokenInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "labels": dict(sorted(t.labels.items())),
        "names": list(t.names) or None,
        "name_pattern": t.name_pattern or None,
        "reenroll": t.reenroll,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "uses": t.uses,
        "used": t.uses - t.uses_left,
        "uses_left": t.uses_left,
        "revoked_at": t.revoked_at or None,
        "state": t.state,
        "nodes": list(t.nodes),
    }


def counts_phrase(counts: Mapping[str, int], leave_out: Sequence[str] = ()) -> str:
    """``{"failed": 1, "pending": 2}`` → ``failed 1, pending 2``, for tables."""
    return ", ".join(f"{state} {n}" for state, n in counts.items() if n and state not in leave_out)


def operator_info(o: pb.OperatorInfo) -> dict[str, Any]:
    return {
        "name": o.name,
        "role": o.role,
        "cert_serial": o.cert_serial,
        "created_at": o.created_at,
        "revoked_at": o.revoked_at or None,
        "state": "revoked" if o.revoked_at else "current",
    }


def operators(reply: pb.ListOperatorsResponse) -> dict[str, Any]:
    return {"operators": [operator_info(o) for o in reply.operators]}


def operator_added(reply: pb.AddOperatorResponse, config: str) -> dict[str, Any]:
    return {"operator": operator_info(reply.operator), "config": config}


def operator_renewed(reply: pb.RenewOperatorResponse, not_after: float) -> dict[str, Any]:
    return {
        "operator": operator_info(reply.operator),
        "not_after": not_after,
        "replaced_serial": reply.replaced_serial,
    }


def operator_revoked(reply: pb.RevokeOperatorResponse) -> dict[str, Any]:
    return {"operator": operator_info(reply.operator), "already_revoked": reply.already_revoked}


def audit_entry(e: pb.AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at,
        "actor_kind": e.actor_kind,
        "actor": e.actor,
        "role": e.role or None,
        "peer": e.peer,
        "action": e.action,
        "details": json.loads(e.details_json or "{}"),
        "result": e.result,
        "reason": e.reason or None,
        "revision": e.revision or None,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }


def audit(reply: pb.ListAuditResponse) -> dict[str, Any]:
    return {"entries": [audit_entry(e) for e in reply.entries], "more": reply.more}


def audit_check(reply: pb.VerifyAuditResponse) -> dict[str, Any]:
    return {
        "intact": reply.intact,
        "entries": reply.entries,
        "head": {"id": reply.head_id, "hash": reply.head_hash} if reply.head_id else None,
        "broken_at": reply.broken_at or None,
        "problem": reply.problem or None,
    }


# ------------------------------------------------------------ tables (plumb and plumb-server)


def when(timestamp: float) -> str:
    """A time in tables: local, to the second; ``-`` for none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a table: columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


def operator_table(infos: Sequence[pb.OperatorInfo]) -> list[str]:
    return table(
        ["OPERATOR", "ROLE", "STATE", "CERT SERIAL", "CREATED", "REVOKED"],
        [
            [
                o.name,
                o.role,
                "revoked" if o.revoked_at else "current",
                o.cert_serial,
                when(o.created_at),
                when(o.revoked_at),
            ]
            for o in infos
        ],
    )
