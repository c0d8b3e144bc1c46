"""What is wrong with this node right now, as its agent sees it: node conditions.

A condition is a state, not an event: it holds while its cause lasts (the
state dir cannot be written, a watcher polls because inotify would not take
a watch) and is gone once the cause is. The agent sends the conditions it
has with its hello and every heartbeat (and at once when they change), and
the server shows them beside the node (``plumb nodes``): an operator sees
that a node is degraded while it still runs, not afterwards in a log.

Conditions live in memory only. A restarted agent finds its causes again
(the first write to a full state dir fails again), and keeping them on disk
would fail for the very condition that matters most.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from protos import plumb_pb2 as pb

#: The state dir takes no writes (full, read-only, I/O errors): reports wait in memory.
STATE_DIR_UNWRITABLE = "state_dir_unwritable"
#: A watcher could not watch some paths through inotify and polls them instead.
WATCH_POLLING = "watch_polling"
#: The node's certificate is due for renewal and the last try failed (agent/renewal.py).
CERTIFICATE_RENEWAL = "certificate_renewal"
#: The host's audit lock is on (agent/auditlock.py): every run only audits, nothing is enforced.
AUDIT_LOCK = "audit_lock"


@dataclasses.dataclass(frozen=True)
class Condition:
    name: str  # one of the constants above: stable, for scripts
    detail: str  # a sentence for the operator: what, where, why, what it costs
    since: float  # unix seconds, by the agent's clock

    def to_wire(self) -> pb.NodeCondition:
        return pb.NodeCondition(name=self.name, detail=self.detail, since=self.since)


class Conditions:
    """The conditions one source holds, by name; thread-safe.

    :attr:`generation` grows with every change (a condition raised or
    cleared, not its detail reworded), so a sender can tell when to say it.
    """

    def __init__(self) -> None:
        self._held: dict[str, Condition] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def hold(self, name: str, detail: str, since: float | None = None) -> bool:
        """``name`` holds, for ``detail``; True if it did not hold before.

        ``since``: when its cause began, if known better than "now" (the time
        an audit lock was set); otherwise when it was first held.
        """
        with self._lock:
            held = self._held.get(name)
            if since is None:
                since = held.since if held is not None else time.time()
            self._held[name] = Condition(name, detail, since)
            if held is None:
                self.generation += 1
            return held is None

    def clear(self, name: str) -> bool:
        """``name`` no longer holds; True if it did."""
        with self._lock:
            if self._held.pop(name, None) is None:
                return False
            self.generation += 1
            return True

    def current(self) -> list[Condition]:
        with self._lock:
            return sorted(self._held.values(), key=lambda c: c.name)
