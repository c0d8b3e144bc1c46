"""One source cannot hammer enrollment: a burst, then a rate, and a hint the agent follows.

A real server: a stream of enrollment attempts from loopback is refused
with RESOURCE_EXHAUSTED once past the burst, saying when to try again (and
before the token is even looked at); a real ``plumb-agent enroll`` that
meets the limit waits as told and enrolls.
"""

from __future__ import annotations

import grpc

from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server.enrollment import ENROLL_BURST
from tests.integration.harness import Agent, Server


def attempt(stub: pb_grpc.EnrollmentStub) -> grpc.RpcError:
    try:
        stub.Enroll(pb.EnrollRequest(token="not a token", node_name="x"), timeout=10)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("enrolled with a bad token")


def test_past_its_burst_a_source_is_told_to_wait_and_the_agent_does(server: Server) -> None:
    ca = (server.data_dir / "operator" / "ca.crt").read_bytes()
    with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca)) as channel:
        stub = pb_grpc.EnrollmentStub(channel)
        answers = [attempt(stub) for _ in range(ENROLL_BURST + 20)]
    codes = [a.code() for a in answers]
    assert codes[:ENROLL_BURST] == [grpc.StatusCode.INVALID_ARGUMENT] * ENROLL_BURST
    busy = [a for a in answers if a.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(busy) >= 10, codes
    assert "too many enrollment attempts from 127.0.0.1" in busy[0].details()
    assert "try again in" in busy[0].details()

    agent = Agent("patient-1", server.data_dir.parent / "agents")
    enrolled = agent.enroll(server, server.token(names=["patient-1"]))
    assert enrolled.returncode == 0, enrolled.stderr
