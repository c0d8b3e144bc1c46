"""Assemble and run the server: two listeners, one grpc.aio server.

The agent/admin listener demands a client certificate from our CA at the TLS
handshake, so a client without one never reaches any handler. The
enrollment listener cannot demand one (a new node has none), which is why
it is separate; the interceptor still refuses agent and admin calls made
through it, since they carry no identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import plumb_pb2_grpc as pb_grpc
from protos.limits import MAX_MESSAGE_BYTES
from server import ca as ca_
from server.admin import AdminServicer, TokenCaps
from server.audit import Auditor
from server.auth import AuthInterceptor, NodeCredentials, OperatorCredentials
from server.config import ServerConfig
from server.enrollment import EnrollmentServicer
from server.errors import PlumbServerError
from server.fleet import Fleet
from server.given import GivenCatalogs
from server.hub import Hub
from server.ingest import Ingestor
from server.internal import InternalErrors
from server.metrics import Metrics
from server.operators import adopt_bootstrap_operator
from server.pki import PKI, cert_pem, fingerprint, key_pem
from server.presence import PresenceLog
from server.renewal import NodeRenewals
from server.rollout import Rollouts
from server.session import AgentServicer
from server.signer import SignerRotation
from server.sources import SourceLimits
from server.store import Migration, Store, migrate

log = logging.getLogger("plumb.server")

#: HTTP/2 keepalive: ping every peer every 10 s and drop a connection whose
#: ping is not answered within 10 s, so a dead transport (a cut cable, a
#: frozen host) is noticed within 20 s even while no stream sends anything.
#: Agents ping as often (agent.tls); allowing that keeps the server from
#: answering their pings with GOAWAY "too many pings".
#: Seconds a connection may carry no call before the server closes it.
IDLE_CONNECTION_S = 15
#: Seconds a new connection has to finish its TLS handshake.
HANDSHAKE_S = 5

SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    # Above every message's own bound (protos/limits.py): a push over its
    # limit is refused by Push in one clear line, not by gRPC.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # No SO_REUSEPORT: a second server on the same ports must fail to start,
    # not silently share the agents with the first.
    ("grpc.so_reuseport", 0),
    # Connection hygiene: a connection with no call on it for IDLE_CONNECTION_S
    # is closed (agents always have their session open; the CLI's calls are
    # short), and one that has not finished its TLS handshake within
    # HANDSHAKE_S too: nobody can hold the server's connections by opening
    # them and doing nothing (gRPC's defaults: never, and 120 s).
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_S * 1000),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_S * 1000),
]


@dataclasses.dataclass(frozen=True)
class Running:
    agent_port: int
    enroll_port: int
    store: Store
    hub: Hub
    migration: Migration  # what was done to the store at start
    auditor: Auditor  # the audit log's writer (server/audit.py)
    #: What became of an older init's operator certificate (see adopt_bootstrap_operator).
    adopted: str | None = None


@contextlib.asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[Running]:
    """Start the server; stop it (gracefully) when the block exits.

    The store is checked and upgraded to this version's schema first, so
    upgrading the package and restarting is all an upgrade takes; a store
    that cannot be (missing, damaged, newer) stops the start with StoreError.
    """
    lock = lock_data_dir(config.data_dir)
    pki = PKI(config.data_dir / "pki")
    # A CA rollover's switch a crash interrupted is finished before anything is loaded.
    await asyncio.to_thread(ca_.resume_switch, pki)
    ca, server_pair, signer = pki.load("ca"), pki.load("server"), pki.load("signer")
    trust = ca_.trust(pki)  # the issuing CA, and during a rollover the other one
    migration = migrate(config.store)
    store = Store(config.store)
    adopted = await asyncio.to_thread(adopt_bootstrap_operator, store, config.data_dir, time.time())
    credentials = NodeCredentials.of(store)
    operators = OperatorCredentials.of(store)
    auditor = Auditor(store)
    hub = Hub(credentials)
    hub.watch()
    fleet = Fleet(store, signer)
    fleet.no_report_after_runs = config.no_report_after_runs
    rotation = SignerRotation(pki, ca, fleet, auditor)
    # Before the first catalog is signed: never one signed by a signer about to expire.
    await asyncio.to_thread(rotation.rotate_if_due)
    ingestor = Ingestor(store)
    presence = PresenceLog(store)
    grpc_server = grpc.aio.server(
        # The internal-error guard outermost: a failure in the interceptors' own
        # work (a store read while checking credentials) is hidden like any other.
        # Then the limit on calls per source, before any work is done for one.
        interceptors=[
            InternalErrors(),
            SourceLimits(),
            AuthInterceptor(credentials, operators, auditor),
        ],
        options=SERVER_OPTIONS,
    )
    # The chain names every trusted CA: a token pins one by fingerprint, and
    # one made before a rollover's switch pins the CA issuing then.
    key_cert = [(key_pem(server_pair.key), cert_pem(server_pair.cert) + trust.bundle)]
    agent_port = _listen(
        grpc_server,
        config.listen,
        grpc.ssl_server_credentials(
            key_cert, root_certificates=trust.bundle, require_client_auth=True
        ),
    )
    enroll_port = _listen(grpc_server, config.enroll_listen, grpc.ssl_server_credentials(key_cert))
    enroll_address = f"{config.advertise}:{enroll_port}"
    pb_grpc.add_EnrollmentServicer_to_server(
        EnrollmentServicer(
            store,
            ca,
            agent_port,
            on_enrolled=fleet.prepare,
            targeted_by=fleet.targeted_by_name,
            auditor=auditor,
            cert_ttl_s=config.node_cert_ttl_s,
            trusted_ca_pem=trust.bundle,
        ),
        grpc_server,
    )
    renewals = NodeRenewals(store, ca, config.node_cert_ttl_s, auditor, credentials)
    given = GivenCatalogs(store)  # what each node was given: pushes fill it, reports read it
    # Staged rollouts keep the nodes they have not reached on the previous revision.
    rollouts = Rollouts(store, hub, fleet.signed_catalog, given)
    fleet.pinned = rollouts.pinned
    hub.listen(rollouts.reported, rollouts.disconnected)
    agents = AgentServicer(
        store, fleet, hub, ingestor, presence, renewals, trusted_ca_pem=trust.bundle, given=given
    )
    pb_grpc.add_AgentServicer_to_server(agents, grpc_server)
    caps = TokenCaps(config.token_max_ttl_s, config.token_max_uses)
    pb_grpc.add_AdminServicer_to_server(
        AdminServicer(
            store,
            fleet,
            hub,
            fingerprint(ca.cert),
            enroll_address,
            caps,
            ca=ca,
            operator_cert_ttl_s=config.operator_cert_ttl_s,
            trusted_ca_pem=trust.bundle,
            given=given,
            rollouts=rollouts,
        ),
        grpc_server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    await grpc_server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    ingestor.start()
    presence.start()
    agents.start()
    rollouts.start()
    stop_metrics = (
        Metrics(store, fleet, hub).serve(config.metrics_listen) if config.metrics_listen else None
    )
    rotating = asyncio.create_task(rotation.keep_rotating(), name="plumb-signer-rotation")
    try:
        yield Running(agent_port, enroll_port, store, hub, migration, auditor, adopted)
    finally:
        await health_servicer.enter_graceful_shutdown()
        await grpc_server.stop(grace=2)
        rotating.cancel()
        rollouts.close()
        if stop_metrics is not None:
            stop_metrics()
        agents.close()
        try:
            # Sessions are gone; commit what they submitted before the store closes.
            await ingestor.close()
            await presence.close()
        finally:
            store.close()
            lock.close()


def _listen(grpc_server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials) -> int:
    _check_free(address)
    try:
        port = int(grpc_server.add_secure_port(address, credentials))
    except RuntimeError as exc:
        port, reason = 0, f": {exc}"
    else:
        reason = ""
    if port == 0:  # gRPC says "could not bind" this way, or by raising
        raise PlumbServerError(
            f"cannot listen on {address} (in use by another process, or not an address "
            f"of this host?){reason}"
        )
    return port


def _check_free(address: str) -> None:
    """Refuse a port another process holds, before gRPC tries (and logs its own lines)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return  # the kernel picks a free one; gRPC says it if the address is wrong
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror:
        return  # not resolvable: gRPC's refusal names it
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC binds: SO_REUSEADDR lets a restarted server have its port
            # back while old connections linger in TIME_WAIT; a listener still
            # holding it refuses all the same.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PlumbServerError(
                        f"cannot listen on {address}: in use by another process "
                        "(another plumb-server?)"
                    ) from None


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``server.lock`` for as long as this server runs: one server per data dir.

    Two servers on one store would each hold some of the agents: a push would
    reach only the agents of the server it was made on.
    """
    handle = open(data_dir / "server.lock", "a+")  # noqa: SIM115 (held for the process' life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise PlumbServerError(
            f"another plumb-server (pid {holder}) is running with {data_dir}: stop it first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


async def serve(config: ServerConfig, stop: asyncio.Event) -> None:
    async with running(config) as server:
        if server.migration.changed:
            # On stderr, so the journal has it; stdout's first line is "listening".
            print(f"plumb-server: {server.migration}", file=sys.stderr, flush=True)
        if server.adopted:
            print(f"plumb-server: {server.adopted}", file=sys.stderr, flush=True)
        host = config.advertise
        print(
            f"plumb-server: listening agents={host}:{server.agent_port} "
            f"enroll={host}:{server.enroll_port} store={config.store}",
            flush=True,
        )
        await stop.wait()
        log.info("stopping")
