"""Message sizes both ends of the wire agree on, set deliberately (see README, "Limits").

gRPC's default of 4 MiB per received message is not what either end wants:
a catalog or a report near it would be refused on every reconnect, for ever.
So each kind of message has a bound of its own, enforced where it is made,
and both ends receive anything up to MAX_MESSAGE_BYTES, comfortably above
every bound.
"""

from __future__ import annotations

#: What the server and the agent accept in one received message.
MAX_MESSAGE_BYTES = 8 * 2**20
#: The manifest text of one push (the CLI and the server refuse more, in one line).
MAX_PUSH_BYTES = 4 * 2**20
#: One node's compiled catalog (a push that would make a larger one is refused).
MAX_CATALOG_BYTES = 6 * 2**20
#: One run report (the agent cuts values, then details, to stay within it).
MAX_REPORT_BYTES = 6 * 2**20
