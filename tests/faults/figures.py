"""The figures of a fault test: what the server stored of node edge-1's numbered reports.

Every report carries its node's sequence number, so the figures follow from
what the server stored: a number missing from 1..N is a lost report, a
number stored twice a duplicate, and the node's status must come from its
highest number (an older report folded last would be a reorder).
"""

from __future__ import annotations

import json
import sqlite3
import time

from tests.integration.harness import Agent, Server, wait_for


def stored(server: Server) -> list[int]:
    """The sequence numbers of every report the server stored for the node."""
    with sqlite3.connect(f"file:{server.data_dir / 'plumb.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT sequence FROM reports WHERE node = 'edge-1'").fetchall()
    return sorted(int(row[0]) for row in rows)


def produced(agent: Agent) -> int:
    """The highest sequence the agent has given a report (its spool's counter)."""
    with sqlite3.connect(f"file:{agent.state_dir / 'spool.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'next_sequence'").fetchone()
    return int(row[0]) - 1


def folded(server: Server) -> int:
    with sqlite3.connect(f"file:{server.data_dir / 'plumb.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT status_sequence FROM nodes WHERE name = 'edge-1'").fetchone()
    return int(row[0])


def figures(fault: str, server: Server, agent: Agent) -> dict[str, object]:
    """Wait until the agent's reports since the fault ended are stored; what the fault did.

    Recovery is timed from the end of the fault until a report made after it
    is stored, with everything before it, and is the node's status.
    """
    fault_over, made_before = time.monotonic(), produced(agent)

    def caught_up() -> bool:
        numbers = stored(server)
        newest = max(produced(agent), made_before + 1)
        return bool(numbers) and numbers[-1] >= newest and folded(server) == numbers[-1]

    wait_for(caught_up, timeout=60, what="every report stored after the fault")
    recovered_s = time.monotonic() - fault_over
    numbers = stored(server)
    result = {
        "fault": fault,
        "reports": len(set(numbers)),
        "lost": len(set(range(1, numbers[-1] + 1)) - set(numbers)),
        "duplicated": len(numbers) - len(set(numbers)),
        "reordered": int(folded(server) != numbers[-1]),
        "recovered_s": round(recovered_s, 2),
    }
    print(json.dumps(result))
    return result


def assert_nothing_lost(result: dict[str, object]) -> None:
    assert (result["lost"], result["duplicated"], result["reordered"]) == (0, 0, 0), result
