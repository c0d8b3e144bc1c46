"""A real server and N simulated agents (bench/simulator.py), for fanout, reconnect and plan.

Setup shortcut, stated plainly: the N nodes are enrolled by issuing their
certificates from the server's CA and inserting them into the store before
the server starts. Enrollment is not what these benchmarks measure; every
byte after that goes through the real server over real mutual TLS.
"""

from __future__ import annotations

import json
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench._common import BenchmarkFailed, progress
from protos import plumb_pb2 as pb
from protos import plumb_pb2_grpc as pb_grpc
from server import store as store_
from server.ca import key_id
from server.pki import PKI, ROLE_NODE, cert_pem, issue_keypair, key_pem
from tests.integration.harness import Server

REPO = Path(__file__).resolve().parents[1]

MANIFEST = """\
name: bench
target: {{all: true}}
resources:
  - kind: file
    name: motd
    spec: {{path: /etc/motd, content: "revision {revision}\\n", mode: "0644"}}
  - kind: file
    name: app
    spec: {{path: /etc/app.conf, content: "workers = {revision}\\n"}}
    require: [file/motd]
  - kind: file
    name: old
    spec: {{path: /etc/old.conf, state: absent}}
"""


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class FleetBench:
    def __init__(self, agents: int, processes: int = 2, ramp_s: float = 0.0) -> None:
        raise_fd_limit()
        self.n = agents
        self.processes = processes
        self.ramp_s = ramp_s
        self.dir = Path(tempfile.mkdtemp(prefix="plumb-bench-"))
        self.data = self.dir / "server"
        self.server: Server | None = None
        self.generators: list[subprocess.Popen[str]] = []
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()

    # -------------------------------------------------------------- setup

    def setup(self) -> None:
        self.server = Server(self.data)  # plumb-server init, as the tests do
        started = time.monotonic()
        self.identities = self._issue()
        progress(f"issued and stored {self.n} node identities in {time.monotonic() - started:.1f}s")

    def _issue(self) -> list[dict[str, str]]:
        ca = PKI(self.data / "pki").load("ca")
        issuer = key_id(ca.cert)
        identities, rows = [], []
        for i in range(self.n):
            name = f"sim-{i:05d}"
            pair = issue_keypair(ca, name, ROLE_NODE)
            identities.append(
                {
                    "name": name,
                    "key": key_pem(pair.key).decode(),
                    "cert": cert_pem(pair.cert).decode(),
                }
            )
            rows.append(
                {
                    "name": name,
                    "labels": {"fleet": "bench"},
                    "cert_serial": format(pair.cert.serial_number, "x"),
                    "enrolled_at": time.time(),
                    "facts": {},
                    # As enrollment records them: nothing left for a first session to write.
                    "cert_not_after": pair.cert.not_valid_after_utc.timestamp(),
                    "cert_issuer": issuer,
                }
            )
        db = store_.Store(f"sqlite:///{self.data / 'plumb.db'}")
        with db.engine.begin() as conn:
            conn.execute(store_.nodes.insert(), rows)
        db.close()
        return identities

    # -------------------------------------------------------------- server

    def start_server(self) -> float:
        """Start (or restart on the same ports); returns the wall time it was spawned."""
        assert self.server is not None
        spawned = time.time()
        try:
            self.server.start()
        except AssertionError as exc:
            raise BenchmarkFailed(str(exc)) from exc
        return spawned

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.agent_address

    def server_rss(self) -> int:
        assert self.server is not None and self.server.process is not None
        return int(psutil.Process(self.server.process.pid).memory_info().rss)

    def kill_server(self) -> float:
        assert self.server is not None
        killed = time.time()
        self.server.kill()
        return killed

    def admin(self) -> Any:
        operator = self.data / "operator"
        credentials = grpc.ssl_channel_credentials(
            (operator / "ca.crt").read_bytes(),
            (operator / "operator.key").read_bytes(),
            (operator / "operator.crt").read_bytes(),
        )
        return pb_grpc.AdminStub(grpc.secure_channel(self.address, credentials))

    def push(self, revision_hint: int) -> tuple[float, Any]:
        """Push a new revision; returns (wall time just before the call, reply)."""
        text = MANIFEST.format(revision=revision_hint)
        stub = self.admin()
        t0 = time.time()
        reply = stub.Push(
            pb.PushRequest(files=[pb.ManifestFile(path="bench.yaml", content=text)]), timeout=120
        )
        if reply.errors:
            raise BenchmarkFailed(f"push refused: {reply.errors}")
        return t0, reply

    # -------------------------------------------------------------- agents

    def start_agents(self) -> None:
        ca = (self.data / "pki" / "ca.crt").read_text()
        chunks = [self.identities[i :: self.processes] for i in range(self.processes)]
        for chunk in chunks:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "simulator.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env=_env(),
            )
            assert proc.stdin is not None
            proc.stdin.write(
                json.dumps(
                    {
                        "server": self.address,
                        "ca": ca,
                        "agents": chunk,
                        "ramp_s": self.ramp_s,
                    }
                )
                + "\n"
            )
            proc.stdin.flush()
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
            self.generators.append(proc)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.events.put(json.loads(line))

    def command(self, cmd: str) -> None:
        """Send every load generator a command (bench/simulator.py says which it knows)."""
        for proc in self.generators:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
            proc.stdin.flush()

    def wait(self, event: str, timeout: float, **match: Any) -> list[dict[str, Any]]:
        """One matching event from every load generator, or BenchmarkFailed."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        while len(found) < self.processes:
            remaining = deadline - time.monotonic()
            try:
                item = self.events.get(timeout=max(0.01, remaining))
            except queue.Empty:
                raise BenchmarkFailed(
                    f"timed out after {timeout}s waiting for {event!r} "
                    f"({len(found)}/{self.processes} generators)"
                ) from None
            wanted = item["event"] == event and all(item.get(k) == v for k, v in match.items())
            (found if wanted else pending).append(item)
        for item in pending:
            self.events.put(item)
        return found

    # -------------------------------------------------------------- teardown

    def close(self) -> None:
        for proc in self.generators:
            proc.kill()
            proc.wait()
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


def merged(events: list[dict[str, Any]], key: str) -> list[float]:
    return [t for event in events for t in event[key]]
