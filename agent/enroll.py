"""Enrollment: make a key here, pin the CA from the token, trade a CSR for a certificate.

The token is a credential: it is read from a file only its owner can read
(``--token-file``) or from standard input (``--token -``), never best taken
from the command line, where every user of the host can read it in
/proc/PID/cmdline while enroll runs (``--token TOKEN`` still works, with a
warning).
"""

from __future__ import annotations

import logging
import os
import random
import re
import stat
import sys
import time
from pathlib import Path
from typing import TextIO

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import EnrollError, NotEnrolled
from agent.state import Enrollment, StateDir, write_atomic
from agent.tls import (
    certificate_request,
    fetch_pinned_ca,
    issued_certificate,
    private_pem,
    split_address,
    trusted_cas,
    usable_trust,
)
from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc

# plumb1.<id>.<secret>.<CA sha256>; the server's server/tokens.py makes them.
# The agent never imports the server, so the format is read here too.
_TOKEN = re.compile(r"plumb1\.[0-9a-f]{8}\.[A-Za-z0-9_-]{32}\.([0-9a-f]{64})")

TIMEOUT_S = 15
#: How long enrollment keeps trying while the server says it is busy (too
#: many attempts from this address: a fleet enrolling through one NAT).
BUSY_PATIENCE_S = 120.0

log = logging.getLogger("plumb.agent")
# The server's rule (server/tokens.py), checked before a CSR is made: the
# name becomes the certificate's common name, at most 64 characters. Always
# with fullmatch: "$" would let a trailing newline through ("node-a\n").
MAX_NAME = 64
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NODE_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
#: More than any token needs: a token file is read no further.
_TOKEN_FILE_MAX = 4096


def valid_node_name(name: str) -> bool:
    return len(name) <= MAX_NAME and _NODE_NAME.fullmatch(name) is not None


def enroll(
    state: StateDir, server: str, token: str, node: str, replace: bool = False
) -> Enrollment:
    """Enroll this node; the result is saved in ``state``. Harmless if already enrolled.

    With ``replace`` (a token from ``plumb node reenroll``), an enrolled node
    enrolls again: a new key, and the new certificate replaces the old one.
    """
    existing = _already_enrolled(state)
    if existing is not None and not replace:
        return existing
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise EnrollError("the token is malformed (expected plumb1.<id>.<secret>.<sha256>)")
    if not valid_node_name(node):
        raise EnrollError(
            f"invalid node name {node!r}: use a lower-case host name of at most {MAX_NAME} "
            "characters (letters, digits, '-' and '.'), with --name if this host's is not"
        )
    ca_pem = fetch_pinned_ca(server, match.group(1))
    key = ec.generate_private_key(ec.SECP256R1())
    csr = certificate_request(key, node)
    reply = _request_certificate(server, ca_pem, token.strip(), node, csr)
    trust = _trust(reply, ca_pem)
    cert = _check_certificate(reply, trust, key)
    return _save(state, key, cert, trust, reply, server)


def read_token_file(path: Path) -> str:
    """The token in ``path``, a file no other user may read (as ssh treats a private key).

    A regular file granting group or others any access is refused, before
    it is read: the token in it may already be someone else's. Pipes and
    terminals (``--token-file /dev/stdin``) are read as they are.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise EnrollError(f"cannot read the token file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
            raise EnrollError(
                f"the token file {path} can be read by other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}): 'chmod 600 {path}', or pass the token "
                "on standard input with --token -"
            )
        data = f.read(_TOKEN_FILE_MAX)
    return _first_line(data.decode(errors="replace"), str(path))


def read_token_stream(stream: TextIO) -> str:
    """The token from the first line of ``stream`` (standard input: ``--token -``)."""
    if stream.isatty():
        import getpass

        return getpass.getpass("enrollment token: ").strip()
    return _first_line(stream.readline(_TOKEN_FILE_MAX), "standard input")


def _first_line(text: str, where: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise EnrollError(f"no token in {where}")


COMMAND_LINE_WARNING = (
    "warning: a token given as --token TOKEN can be read by every user of this host "
    "(in /proc/PID/cmdline) while enroll runs; use --token-file PATH or --token - (stdin)"
)


def warn_command_line_token() -> None:
    print(f"plumb-agent: {COMMAND_LINE_WARNING}", file=sys.stderr)


def _already_enrolled(state: StateDir) -> Enrollment | None:
    try:
        enrollment = state.enrollment()
    except NotEnrolled:
        return None
    return enrollment if state.cert.exists() and state.key.exists() else None


def _request_certificate(
    server: str, ca_pem: bytes, token: str, node: str, csr: bytes
) -> pb.EnrollResponse:
    channel = grpc.secure_channel(server, grpc.ssl_channel_credentials(ca_pem))
    request = pb.EnrollRequest(token=token, node_name=node, csr_pem=csr)
    give_up = time.monotonic() + BUSY_PATIENCE_S
    try:
        while True:
            try:
                reply: pb.EnrollResponse = pb_grpc.EnrollmentStub(channel).Enroll(
                    request, timeout=TIMEOUT_S
                )
                return reply
            except grpc.RpcError as exc:
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                wait = _busy_for(exc)
                if wait is None or time.monotonic() + wait > give_up:
                    raise EnrollError(f"{server}: {details}") from exc
                # Many nodes enrolling from one address at once: the server says when.
                log.info("%s: %s; trying again", server, details)
                time.sleep(wait)
    finally:
        channel.close()


def _busy_for(exc: grpc.RpcError) -> float | None:
    """Seconds the server asked us to wait (RESOURCE_EXHAUSTED "try again in N s"); None: no."""
    if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    found = re.search(r"try again in ([0-9.]+) s", exc.details() or "")
    return float(found[1]) + random.uniform(0, 0.5) if found else None


def _trust(reply: pb.EnrollResponse, pinned: bytes) -> bytes:
    """What to trust from now on: the server's CA certificates if they include the pinned one.

    During a CA rollover (server/ca.py) the server trusts two; the pinned CA
    vouched for the connection that brought them. Anything else: the pinned
    CA alone.
    """
    usable = usable_trust(reply.ca_pem) is None
    if usable and x509.load_pem_x509_certificate(pinned) in trusted_cas(reply.ca_pem):
        return reply.ca_pem
    return pinned


def _check_certificate(
    reply: pb.EnrollResponse, ca_pem: bytes, key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    cert = issued_certificate(reply.certificate_pem, ca_pem, key)
    if isinstance(cert, str):
        # The pinned CA did not issue it, or not for our key: the server is
        # not the one the token names.
        raise EnrollError(f"the server's certificate for this node does not verify: {cert}")
    return cert


def _save(
    state: StateDir,
    key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    ca_pem: bytes,
    reply: pb.EnrollResponse,
    server: str,
) -> Enrollment:
    state.ensure()
    write_atomic(state.ca, ca_pem)
    state.replace_identity(private_pem(key), cert.public_bytes(serialization.Encoding.PEM))
    host, _ = split_address(server)
    enrollment = Enrollment(
        node=reply.node_name,
        server=f"{host}:{reply.agent_port}",
        labels=dict(reply.labels),
        enrolled_at=time.time(),
    )
    state.save_enrollment(enrollment)
    return enrollment
