"""Translation between wire messages (protos) and the store's records."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from modules.base import Status
from protos import plumb_pb2 as pb
from server import audit
from server.cliviews import trigger_word
from server.store import OperatorRow, ReportRecord, ResultRecord, StateLossRow

# Enum fields accept the value name; received messages carry the number.
STATUS_TO_PB: dict[Status, str] = {s: s.name for s in Status}
STATUS_FROM_PB: dict[int, Status] = {pb.Status.Value(s.name): s for s in Status}


#: The latest time an agent may say anything happened at (unix seconds: year
#: 3000). Later, negative or not a number at all is a clock or a sender gone
#: wrong, kept as 0: not known.
LATEST_TIME = 32503680000.0


def agent_time(timestamp: float) -> float:
    """A time an agent sent, as the server keeps it: 0 (not known) unless it can be one."""
    return timestamp if math.isfinite(timestamp) and 0 <= timestamp <= LATEST_TIME else 0.0


def report_record(report: pb.Report) -> ReportRecord:
    return ReportRecord(
        id=report.id,
        node=report.node_name,
        revision=report.revision,
        noop=report.noop,
        trigger=trigger_word(report.trigger),
        started_at=agent_time(report.started_at),
        finished_at=agent_time(report.finished_at),
        results=[_result_record(r) for r in report.results],
        body=report.SerializeToString(),
        sequence=report.sequence,
    )


def _result_record(result: pb.ResourceResult) -> ResultRecord:
    return ResultRecord(
        resource_id=result.id,
        manifest=result.manifest,
        status=STATUS_FROM_PB.get(result.status, Status.UNKNOWN),
        changes=[changes_dict(c) for c in result.changes],
        controls=list(result.controls),
        drift=result.drift,
    )


def changes_dict(change: pb.Change) -> dict[str, str]:
    found = {"field": change.field, "observed": change.observed, "desired": change.desired}
    if change.diff:  # a small text file's content: what changed, line by line
        found["diff"] = change.diff
    return found


def report_from_body(body: bytes) -> pb.Report:
    return pb.Report.FromString(body)


#: The most a node may say about one loss; the rest of a longer detail is cut.
MAX_LOSS_DETAIL = 2000
#: Conditions kept per node: an agent has a handful; more is not an agent's.
MAX_CONDITIONS = 16


def state_loss_record(node: str, loss: pb.StateLoss) -> StateLossRow:
    """A loss as the store keeps it: ``count`` -1 (unknown) becomes None."""
    return StateLossRow(
        node=node,
        id=loss.id[:64],
        what=loss.what[:32],
        count=None if loss.count < 0 else loss.count,
        found_at=agent_time(loss.at),
        detail=loss.detail[:MAX_LOSS_DETAIL],
    )


def conditions_record(said: Sequence[pb.NodeCondition]) -> list[dict[str, Any]]:
    """An agent's conditions as the store keeps them (bounded: an agent's word, not ours)."""
    return [
        {"name": c.name[:64], "detail": c.detail[:MAX_LOSS_DETAIL], "since": agent_time(c.since)}
        for c in said[:MAX_CONDITIONS]
    ]


def conditions_to_pb(kept: Sequence[Mapping[str, Any]]) -> list[pb.NodeCondition]:
    return [
        pb.NodeCondition(name=str(c["name"]), detail=str(c["detail"]), since=float(c["since"]))
        for c in kept
    ]


def state_loss_to_pb(row: StateLossRow) -> pb.StateLoss:
    return pb.StateLoss(
        id=row.id,
        what=row.what,
        count=-1 if row.count is None else row.count,
        at=row.found_at,
        detail=row.detail,
        received_at=row.received_at,
    )


def operator_info(row: OperatorRow) -> pb.OperatorInfo:
    return pb.OperatorInfo(
        name=row.name,
        role=row.role,
        cert_serial=row.cert_serial,
        created_at=row.created_at,
        revoked_at=row.revoked_at or 0.0,
    )


def audit_entry(r: audit.Record) -> pb.AuditEntry:
    return pb.AuditEntry(
        id=r.id,
        at=r.at,
        actor_kind=r.actor_kind,
        actor=r.actor,
        role=r.role,
        peer=r.peer,
        action=r.action,
        details_json=r.details,
        result=r.result,
        reason=r.reason,
        revision=r.revision or 0,
        prev_hash=r.prev_hash,
        hash=r.hash,
    )
