"""The agent's state directory (default /var/lib/plumb, mode 0700).

node.key node.crt ca.crt   identity (0600); the key is made here and never leaves
enrollment.json            node name, server address, labels
catalog.pb                 the last verified SignedCatalog, re-verified on every load
spool.db                   reports not yet acknowledged by the server
last_run.json              summary of the last run, for `plumb-agent status`
clock.json                 this host's clock minus the server's, seen at the last welcome
flapping.json              drift repairs per resource, and holds (agent/flapping.py)
converged.json             resource id -> spec hash it last converged to (drift vs. change)
reverted.json              risky resources reverted at a revision: held until a new one
run.lock                   one run at a time across daemon and `run --once`
restart-requested          left by the agent's own package upgrade: restart after the run
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from agent.errors import NotEnrolled


@dataclasses.dataclass(frozen=True)
class Enrollment:
    node: str
    server: str  # host:port of the Agent service (mutual TLS)
    labels: dict[str, str]
    enrolled_at: float


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def key(self) -> Path:
        return self.path / "node.key"

    @property
    def cert(self) -> Path:
        return self.path / "node.crt"

    @property
    def ca(self) -> Path:
        return self.path / "ca.crt"

    @property
    def catalog(self) -> Path:
        return self.path / "catalog.pb"

    @property
    def spool(self) -> Path:
        return self.path / "spool.db"

    @property
    def restart_requested(self) -> Path:
        return self.path / "restart-requested"

    @property
    def last_run(self) -> Path:
        return self.path / "last_run.json"

    @property
    def converged(self) -> Path:
        return self.path / "converged.json"

    @property
    def clock(self) -> Path:
        return self.path / "clock.json"

    @property
    def lock(self) -> Path:
        return self.path / "run.lock"

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def enrollment(self) -> Enrollment:
        try:
            raw = json.loads((self.path / "enrollment.json").read_text())
        except FileNotFoundError:
            raise NotEnrolled(
                f"this node is not enrolled (no {self.path}/enrollment.json): "
                "run 'plumb-agent enroll --server HOST:PORT --token TOKEN'"
            ) from None
        return Enrollment(**raw)

    def save_enrollment(self, enrollment: Enrollment) -> None:
        write_atomic(
            self.path / "enrollment.json",
            json.dumps(dataclasses.asdict(enrollment), indent=2).encode(),
        )

    def read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write via a temp file and rename, so a crash leaves the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
