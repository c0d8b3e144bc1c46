"""One node cannot flood the server with reports: past a burst they are read at a set rate.

The security review saw one node send 365 reports a second (issue 11). A
real server; the test's own stream, with a real node's key and certificate,
sends more reports than the burst as fast as it can. The server takes them
all (they are real reports) but reads them no faster than REPORT_RATE once
REPORT_BURST is spent, and says so in its log, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from protos import plumb_pb2 as pb
from server.session import REPORT_BURST, REPORT_RATE
from tests.integration.harness import Agent, Server, wait_for
from tests.integration.test_revocation import Stream, node_channel

EXTRA = 150  # reports past the burst: about EXTRA / REPORT_RATE seconds to read


def test_reports_past_the_burst_are_read_at_the_rate_not_refused(
    server: Server, enrolled: Callable[..., Agent]
) -> None:
    agent = enrolled("web-1")
    stream = Stream(node_channel(server, agent))
    try:
        wait_for(stream.welcomed, 10, "the welcome")
        total = REPORT_BURST + EXTRA
        started = time.monotonic()
        for number in range(total):
            # Of a revision never given: acked, not stored, yet read like any report.
            report = pb.Report(id=f"r-{number}", node_name="web-1", revision=7, sequence=number + 1)
            stream.send(pb.AgentMessage(report=report))

        def acked() -> int:
            return sum(1 for r in stream.replies if r.HasField("ack"))

        wait_for(lambda: acked() == total, 60, "every report acked")
        elapsed = time.monotonic() - started
        assert not stream.ended(), stream.status()
        # Throttled once the burst is spent: unthrottled, all of them take a
        # fraction of a second; at the rate, EXTRA / RATE (a little less, as
        # the bucket refills while the burst is read).
        assert elapsed >= 0.5 * EXTRA / REPORT_RATE, elapsed
        log = server.logs()
        assert log.count("node web-1 sends reports faster than 50 a second") == 1, log
    finally:
        stream.close()
