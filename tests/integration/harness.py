"""Real Plumb processes for integration tests: a server and agents on loopback.

Everything runs as the user would run it: `plumb-server`, `plumb` and
`plumb-agent` as separate processes talking mutual TLS over 127.0.0.1, each
with its own directories under the test's tmp_path. Nothing outside those is
touched; every process is stopped at the end, even when a test fails.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LISTENING = re.compile(r"listening agents=(\S+) enroll=(\S+)")


def command(module: str, netns: str | None = None) -> list[str]:
    """``python -m module``, inside network namespace ``netns`` when given."""
    inside = ["ip", "netns", "exec", netns] if netns else []
    return [*inside, sys.executable, "-m", module]


def skewed(clock: str | None) -> list[str]:
    """A command prefix that skews a process's wall clock by ``clock`` (libfaketime: "+2h").

    Only the wall clock, as on a host whose clock is wrong: its monotonic
    clock (timeouts, timers) runs true. The library is preloaded through
    ``env``, which execs the command: the process started is the program
    itself, so stopping it stops it (the ``faketime`` wrapper would stay
    between, and a SIGTERM to it would leave the program running).
    """
    if not clock:
        return []
    [library] = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    return ["env", f"LD_PRELOAD={library}", f"FAKETIME={clock}", "FAKETIME_DONT_FAKE_MONOTONIC=1"]


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail loudly at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def terminate(process: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Server:
    def __init__(self, data_dir: Path, netns: str | None = None, host: str = "127.0.0.1") -> None:
        """A server listening on ``host`` (in ``netns`` when given); ports chosen by the kernel."""
        self.data_dir = data_dir
        self.netns = netns
        self.process: subprocess.Popen[str] | None = None
        self.log = open(os.devnull, "w")  # noqa: SIM115
        self.agent_address = ""
        self.enroll_address = ""
        names = [host] if host != "127.0.0.1" else ["localhost", "127.0.0.1"]
        init = [
            "init",
            *[a for n in names for a in ("--san", n)],
            "--listen",
            f"{host}:0",
            "--enroll-listen",
            f"{host}:0",
        ]
        subprocess.run(
            [*command("server.main"), "--data-dir", str(data_dir), *init],
            check=True,
            capture_output=True,
            text=True,
        )
        self.cli_config = data_dir / "operator" / "cli.toml"

    def start(self, clock: str | None = None) -> None:
        """Start on the ports of the previous start, if any (agents remember them).

        ``clock`` (libfaketime's "+100d") skews the server's wall clock, as
        :meth:`Agent.start` does the agent's.
        """
        args = [
            *skewed(clock),
            *command("server.main", self.netns),
            "--data-dir",
            str(self.data_dir),
            "run",
        ]
        if self.agent_address:
            args += ["--listen", self.agent_address, "--enroll-listen", self.enroll_address]
        self.log.close()
        self.log = open(self.data_dir / "server.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = LISTENING.search(line)
        if not match:
            self.stop()
            raise AssertionError(f"server did not start: {line!r}\n{self.logs()}")
        self.agent_address = match.group(1).replace("localhost", "127.0.0.1")
        self.enroll_address = match.group(2).replace("localhost", "127.0.0.1")

    def stop(self) -> None:
        if self.process:
            terminate(self.process, 10)
        if self.process and self.process.stdout:
            self.process.stdout.close()
        self.process = None
        self.log.close()

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a crash."""
        if self.process:
            self.process.kill()
            self.process.wait()
        self.stop()

    def logs(self) -> str:
        path = self.data_dir / "server.log"
        return path.read_text() if path.exists() else ""

    def cli(
        self, *args: str, check: bool = True, answer: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``plumb ARGS`` as this server's admin; ``answer``: what to type when it asks."""
        env = {
            **os.environ,
            "PLUMB_CONFIG": str(self.cli_config),
            "PLUMB_SERVER": self.agent_address,
        }
        result = subprocess.run(
            command("server.cli", self.netns) + list(args),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            input=answer if answer is not None else "",
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"plumb {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def token(
        self,
        labels: dict[str, str] | None = None,
        uses: int = 1,
        ttl: int = 600,
        names: list[str] | None = None,
        pattern: str | None = None,
    ) -> str:
        label_args = [f"{k}={v}" for k, v in (labels or {}).items()]
        bind = ["--names", ",".join(names)] if names else []
        bind += ["--name-pattern", pattern] if pattern else []
        reply = self.cli_json(
            "token",
            "create",
            "--uses",
            str(uses),
            "--ttl",
            str(ttl),
            *bind,
            "--labels",
            *label_args,
        )
        return str(reply["token"])

    def push(self, *files: Path) -> subprocess.CompletedProcess[str]:
        return self.cli("push", *[str(f) for f in files], check=False)

    def nodes(self) -> dict[str, Any]:
        return {n["name"]: n for n in self.cli_json("nodes").get("nodes", [])}


class Agent:
    def __init__(self, name: str, base: Path, netns: str | None = None) -> None:
        self.name = name
        self.netns = netns
        self.state_dir = base / name / "state"
        self.root = base / name / "root"
        self.root.mkdir(parents=True)
        self.process: subprocess.Popen[bytes] | None = None

    def _cmd(self, *args: str, clock: str | None = None) -> list[str]:
        """The agent's command line; ``clock`` (libfaketime's "+2h", "-1d") skews its clock."""
        # --config /dev/null: the machine's own /etc/plumb/agent.toml must not leak into tests.
        base = [*command("agent.main", self.netns), "--config", "/dev/null"]
        return [*skewed(clock), *base, "--state-dir", str(self.state_dir), *args]

    def enroll(self, server: Server, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """``plumb-agent enroll`` as the install command runs it: the token on stdin."""
        return subprocess.run(
            self._cmd(
                "enroll",
                "--server",
                server.enroll_address,
                "--token",
                "-",
                "--name",
                self.name,
                *extra,
            ),
            input=f"{token}\n",
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(
        self,
        interval: float = 3600,
        splay: float = 0,
        *extra: str,
        clock: str | None = None,
        inotify_watches: int | None = None,
    ) -> None:
        """Start the daemon; ``inotify_watches``: in a user namespace of its own with that limit.

        inotify limits are counted per user namespace: root in a new one sets
        its own (:func:`set_inotify_watches` changes it later), never the machine's.
        """
        limited = (
            [
                *("unshare", "--user", "--map-root-user", "sh", "-c"),
                f'echo {inotify_watches} > /proc/sys/user/max_inotify_watches && exec "$@"',
                "plumb-agent",
            ]
            if inotify_watches is not None
            else []
        )
        self.log = open(self.state_dir.parent / "agent.log", "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                *limited,
                *self._cmd(
                    "daemon",
                    "--root",
                    str(self.root),
                    "--interval",
                    str(interval),
                    "--splay",
                    str(splay),
                    *extra,
                    clock=clock,
                ),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def set_inotify_watches(self, limit: int) -> None:
        """Change the inotify watch limit of a daemon started with ``inotify_watches``."""
        assert self.process is not None
        setting = f"echo {limit} > /proc/sys/user/max_inotify_watches"
        subprocess.run(
            ["nsenter", "--user", "-t", str(self.process.pid), "sh", "-c", setting],
            check=True,
            timeout=10,
        )

    def stop(self) -> None:
        if self.process:
            terminate(self.process, 15)
        self.process = None
        if hasattr(self, "log"):
            self.log.close()

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as in a crash or an OOM kill."""
        if self.process:
            self.process.kill()
            self.process.wait()
        self.stop()

    def run_once(
        self, *extra: str, timeout: float = 10, clock: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._cmd(
                "run",
                "--once",
                "--root",
                str(self.root),
                "--timeout",
                str(timeout),
                *extra,
                clock=clock,
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def status(self) -> Any:
        result = subprocess.run(
            self._cmd("status", "--json"), capture_output=True, text=True, check=True, timeout=60
        )
        return json.loads(result.stdout)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def logs(self) -> str:
        path = self.state_dir.parent / "agent.log"
        return path.read_text() if path.exists() else ""


def reported(server: Server, revision: int, *names: str) -> None:
    """Wait until each node's newest run report is of ``revision``."""
    for name in names:
        wait_for(
            lambda name=name: server.nodes()[name]["reported_revision"] == revision,
            what=f"{name} to report revision {revision}",
        )
