"""Evidence exports of compliance: one self-contained HTML page, CSV and JUnit XML.

Pure functions over what the Admin service answered (``plumb compliance
--format``): no network is needed to open the page (styles and the chart
are inline; no script, no font, no image is fetched), and every export
states what produced it: the revision, the time it was made, the time
range of the drift it lists and the command's query.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import time
from collections.abc import Sequence
from xml.etree import ElementTree

from protos import plumb_pb2 as pb

#: States that are neither compliant nor accepted: what an auditor looks at first.
NOT_COMPLIANT_ORDER = ("failed", "drifted", "no_report", "no_catalog", "unknown", "skipped")


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What one export is made of, and what made it."""

    compliance: pb.GetComplianceResponse
    drift: Sequence[pb.DriftEvent]
    query: str  # the command line that produced it
    made_at: float  # unix seconds, the server's answer time as the CLI saw it

    @property
    def drift_range(self) -> tuple[float, float] | None:
        times = [e.detected_at for e in self.drift]
        return (min(times), max(times)) if times else None


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))


def _percent(value: float) -> str:
    return "-" if value < 0 else f"{value:.1f} %"


def _failing(row: pb.ComplianceRow) -> int:
    return sum(row.counts.get(state, 0) for state in NOT_COMPLIANT_ORDER)


def to_csv(evidence: Evidence) -> str:
    """One row per scope and name, the count of every state in its own column; first the
    lines saying what produced it, each starting with ``#``."""
    rows = [*evidence.compliance.rows, evidence.compliance.fleet]
    states = sorted({state for r in rows for state in r.counts})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # What produced it, as comment lines (pandas: comment="#"), before the header.
    made = _when(evidence.made_at)
    out.write(f"# plumb compliance at revision {evidence.compliance.revision}, {made}\n")
    out.write(f"# query: {' '.join(evidence.query.splitlines())}\n")
    writer.writerow(
        ["scope", "name", "compliant", "expected", "percent", "percent_with_waivers", *states]
    )
    for r in rows:
        writer.writerow(
            [
                r.scope,
                r.name,
                r.compliant,
                r.expected,
                "" if r.percent < 0 else f"{r.percent:.2f}",
                "" if r.percent_with_waivers < 0 else f"{r.percent_with_waivers:.2f}",
                *(r.counts.get(state, 0) for state in states),
            ]
        )
    return out.getvalue()


def to_junit(evidence: Evidence) -> str:
    """A test suite per node, a test case per state count: CI dashboards read it."""
    suites = ElementTree.Element(
        "testsuites",
        name=f"plumb compliance, revision {evidence.compliance.revision}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(evidence.made_at)),
    )
    ElementTree.SubElement(suites, "properties")
    props = suites.find("properties")
    assert props is not None
    ElementTree.SubElement(props, "property", name="query", value=evidence.query)
    for row in [r for r in evidence.compliance.rows if r.scope == "control"]:
        failures = _failing(row)
        suite = ElementTree.SubElement(
            suites,
            "testsuite",
            name=f"control {row.name}",
            tests=str(row.expected),
            failures=str(failures),
        )
        case = ElementTree.SubElement(suite, "testcase", classname="control", name=row.name)
        if failures:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(row.counts.items()))
            failure = ElementTree.SubElement(
                case, "failure", message=f"{row.compliant}/{row.expected} compliant"
            )
            failure.text = counts
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def to_html(evidence: Evidence) -> str:
    """One page, nothing fetched: summary, compliance by control (a bar chart), the worst
    nodes, the drift timeline, and what produced it."""
    c = evidence.compliance
    e = html.escape
    controls = sorted(
        (r for r in c.rows if r.scope == "control"), key=lambda r: (r.percent, r.name)
    )
    worst = sorted(
        (r for r in c.rows if r.scope == "node" and r.expected),
        key=lambda r: (-_failing(r), r.percent, r.name),
    )[:10]
    span = evidence.drift_range
    drift_range = f"{_when(span[0])} to {_when(span[1])}" if span else "no drift events"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Plumb compliance, revision {c.revision}</title>",
        "<style>"
        "body{font-family:sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        ".bad{color:#a00}.meta{color:#555;font-size:.9em}"
        "</style></head><body>",
        f"<h1>Compliance at revision {c.revision}</h1>",
        '<p class="meta" id="provenance">'
        f"Made {e(_when(evidence.made_at))} by <code>{e(evidence.query)}</code>; "
        f"revision {c.revision}; drift events from {e(drift_range)}.</p>",
        '<h2>Fleet</h2><p id="fleet">'
        f"{c.fleet.compliant} of {c.fleet.expected} expected resources compliant: "
        f"<strong>{_percent(c.fleet.percent)}</strong> "
        f"({_percent(c.fleet.percent_with_waivers)} with waivers). "
        + e(", ".join(f"{k}: {v}" for k, v in sorted(c.fleet.counts.items())))
        + "</p>",
        "<h2>By control</h2>",
        _chart(controls),
        _table(
            ["Control", "Compliant", "Percent", "With waivers", "Not compliant"],
            [
                [
                    r.name,
                    f"{r.compliant}/{r.expected}",
                    _percent(r.percent),
                    _percent(r.percent_with_waivers),
                    _not_compliant(r),
                ]
                for r in controls
            ],
            "controls",
        ),
        "<h2>Worst nodes</h2>",
        _table(
            ["Node", "Compliant", "Percent", "Not compliant"],
            [
                [r.name, f"{r.compliant}/{r.expected}", _percent(r.percent), _not_compliant(r)]
                for r in worst
            ],
            "nodes",
        ),
        "<h2>Drift timeline</h2>",
        _table(
            ["Detected", "Node", "Resource", "Status", "What changed"],
            [
                [
                    _when(ev.detected_at),
                    ev.node_name,
                    ev.resource_id,
                    str(pb.Status.Name(ev.status)).lower(),
                    "; ".join(f"{ch.field}: {ch.observed} → {ch.desired}" for ch in ev.changes),
                ]
                for ev in evidence.drift
            ],
            "drift",
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _not_compliant(row: pb.ComplianceRow) -> str:
    shown = [(k, v) for k, v in sorted(row.counts.items()) if k not in ("in_sync", "repaired")]
    return ", ".join(f"{k} {v}" for k, v in shown) or "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], ident: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(headers)}">none</td></tr>'
    return f'<table id="{ident}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _chart(rows: Sequence[pb.ComplianceRow]) -> str:
    """Compliance by control as inline SVG bars: drawn by the browser, nothing fetched."""
    if not rows:
        return "<p>No resource carries a control.</p>"
    bar, gap, label = 18, 6, 160
    height = len(rows) * (bar + gap)
    shapes = []
    for i, r in enumerate(rows):
        y = i * (bar + gap)
        share = max(r.percent, 0.0) / 100
        shapes.append(
            f'<text x="0" y="{y + bar - 4}" font-size="12">{html.escape(r.name)}</text>'
            f'<rect x="{label}" y="{y}" width="300" height="{bar}" fill="#eee"/>'
            f'<rect class="bar" data-control="{html.escape(r.name)}" x="{label}" y="{y}" '
            f'width="{300 * share:.1f}" height="{bar}" fill="#2a7"/>'
            f'<text x="{label + 310}" y="{y + bar - 4}" font-size="12">'
            f"{_percent(r.percent)}</text>"
        )
    return (
        f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{label + 380}" '
        f'height="{height}" role="img" aria-label="compliance by control">'
        + "".join(shapes)
        + "</svg>"
    )
