"""Every message the server accepts, fuzzed against a real server over TLS.

One server for the module, one enrolled node and its operator: generated
enrollment requests, agent session streams (a hello of any content, then
reports, acks and heartbeats of any content) and admin requests. Whatever
arrives, the answer is an answer or a status with a sentence — never
UNKNOWN or INTERNAL (a failure nobody translated), never a traceback — and
the server keeps answering.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.state import StateDir
from agent.tls import secure_channel
from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server.cli import load_config
from tests.integration.harness import Agent, Server

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
uint32 = st.integers(min_value=0, max_value=2**32 - 1)
text = st.text(max_size=80)
doubles = st.floats(allow_nan=True, allow_infinity=True)
labels = st.dictionaries(text, text, max_size=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Agent]]:
    base = tmp_path_factory.mktemp("fuzz")
    server = Server(base / "server")
    server.start()
    agent = Agent("fuzz-1", base / "agents")
    try:
        enrolled = agent.enroll(server, server.token())
        assert enrolled.returncode == 0, enrolled.stderr
        yield server, agent
    finally:
        server.stop()


def answered(call: grpc.RpcError | None) -> None:
    """A refusal must be one the server meant, said in a sentence."""
    if call is None:
        return
    assert isinstance(call, grpc.Call)
    assert call.code() not in NEVER, (call.code(), call.details())
    assert "Traceback" not in (call.details() or "")


def still_up(server: Server) -> None:
    assert server.process is not None and server.process.poll() is None
    assert server.cli("nodes").returncode == 0


@FUZZ
@given(
    token=text | st.just("plumb1.") | text.map(lambda t: f"plumb1.{t}"),
    name=text,
    csr=st.binary(max_size=600),
)
def test_enrollment(world: tuple[Server, Agent], token: str, name: str, csr: bytes) -> None:
    server, _ = world
    ca = (server.data_dir / "operator" / "ca.crt").read_bytes()
    with grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(ca)) as channel:
        request = pb.EnrollRequest(token=token, node_name=name, csr_pem=csr)
        try:
            pb_grpc.EnrollmentStub(channel).Enroll(request, timeout=20)
        except grpc.RpcError as exc:
            answered(exc)
        else:
            raise AssertionError(f"enrolled with a fuzzed request: {request}")


results = st.builds(
    pb.ResourceResult,
    id=text,
    kind=text,
    name=text,
    manifest=text,
    status=st.integers(min_value=0, max_value=8),
    error=text,
    duration_s=doubles,
    controls=st.lists(text, max_size=3),
    drift=st.booleans(),
    observed=labels,
    changes=st.lists(st.builds(pb.Change, field=text, observed=text, desired=text), max_size=3),
)
reports = st.builds(
    pb.Report,
    id=text,
    node_name=text | st.just("fuzz-1"),
    revision=int64,
    sequence=st.integers(min_value=0, max_value=2**64 - 1),
    started_at=doubles,
    finished_at=doubles,
    trigger=st.integers(min_value=0, max_value=8),
    results=st.lists(results, max_size=4),
)
hellos = st.builds(
    pb.Hello,
    node_name=st.just("fuzz-1") | text,
    facts=labels,
    applied_revision=int64,
    agent_version=text,
    sent_at=doubles,
    losses=st.lists(
        st.builds(pb.StateLoss, id=text, what=text, count=int64, at=doubles, detail=text),
        max_size=3,
    ),
    conditions=st.lists(
        st.builds(pb.NodeCondition, name=text, detail=text, since=doubles), max_size=3
    ),
)
followers = st.one_of(
    reports.map(lambda r: pb.AgentMessage(report=r)),
    st.builds(pb.CatalogAck, revision=int64, accepted=st.booleans(), error=text).map(
        lambda a: pb.AgentMessage(catalog_ack=a)
    ),
    st.builds(
        pb.Heartbeat,
        conditions=st.lists(st.builds(pb.NodeCondition, name=text, detail=text), max_size=2),
    ).map(lambda h: pb.AgentMessage(heartbeat=h)),
    hellos.map(lambda h: pb.AgentMessage(hello=h)),
)


@FUZZ
@given(
    first=hellos.map(lambda h: pb.AgentMessage(hello=h)) | followers,
    then=st.lists(followers, max_size=5),
)
def test_agent_sessions(
    world: tuple[Server, Agent], first: pb.AgentMessage, then: list[pb.AgentMessage]
) -> None:
    server, agent = world
    with secure_channel(StateDir(agent.state_dir), server.agent_address) as channel:
        call = pb_grpc.AgentStub(channel).Session(iter([first, *then]), timeout=20)
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                answered(exc)


admin_requests = st.one_of(
    st.builds(
        pb.PushRequest,
        files=st.lists(st.builds(pb.ManifestFile, path=text, content=text), max_size=3),
        wait_s=st.floats(min_value=0, max_value=0.5),
    ).map(lambda r: ("Push", r)),
    st.builds(pb.CreateTokenRequest, labels=labels, ttl_s=uint32, uses=uint32).map(
        lambda r: ("CreateToken", r)
    ),
    st.builds(pb.GetReportRequest, node_name=text).map(lambda r: ("GetReport", r)),
    st.builds(pb.ListDriftRequest, node_name=text, limit=uint32).map(lambda r: ("ListDrift", r)),
    st.builds(pb.RevokeTokenRequest, id=text).map(lambda r: ("RevokeToken", r)),
    st.builds(pb.ReenrollNodeRequest, node_name=text, ttl_s=uint32).map(
        lambda r: ("ReenrollNode", r)
    ),
)


@FUZZ
@given(request=admin_requests)
def test_admin_requests(world: tuple[Server, Agent], request: tuple[str, object]) -> None:
    server, _ = world
    config = load_config(server.cli_config)
    credentials = grpc.ssl_channel_credentials(
        config.ca.read_bytes(), config.key.read_bytes(), config.cert.read_bytes()
    )
    method, message = request
    with grpc.secure_channel(server.agent_address, credentials) as channel:
        try:
            getattr(pb_grpc.AdminStub(channel), method)(message, timeout=20)
        except grpc.RpcError as exc:
            answered(exc)


def test_the_server_is_still_up_after_all_that(world: tuple[Server, Agent]) -> None:
    still_up(world[0])
