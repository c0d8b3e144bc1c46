"""A real systemd host for tests: a cached Debian rootfs booted with systemd-nspawn.

::

    rootfs = ensure_rootfs()                  # debootstrap once (~1 min), then cached
    with SystemdHost(rootfs, netns="plumb-h1-123-0",
                     binds_ro=[(repo_dir, "/srv/repo")]) as host:
        host.write_file("/etc/systemd/system/x.service", UNIT)
        host.run("systemctl", "daemon-reload")
        host.run("systemctl", "start", "x")

Each host boots with ``--volatile=overlay``: its writes land in a tmpfs that
disappears with it, so the cached rootfs is never modified and every host
starts from the same clean state. It gets CAP_NET_ADMIN (``capabilities=()``
boots one without), so that the firewall and route kinds work in it as on a
real host; it always runs in a network namespace of its own or of the
caller's, never the test machine's, so it can only change its own firewall
and routes. The machine running the tests is not a
systemd host itself (no systemd as PID 1), so nothing registers the container
with machined; instead each host gets its own cgroup ``plumb-<pid>-<n>``,
which is also how :meth:`SystemdHost.stop` finds and kills everything the
container left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType

import pytest

from tests.hosts import CommandFailed, run

CACHE_DIR = Path(os.environ.get("PLUMB_TEST_CACHE", "/var/cache/plumb-test"))
# The mirror is not part of the recipe: any mirror yields the same rootfs.
MIRROR = os.environ.get("PLUMB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# nftables: the agent's .deb only recommends it, and a test host has no network
# source to install it from; the firewall kind and the tests run nft inside.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "ca-certificates",
    "iproute2",
    "nftables",
)
# Bump when _customise() changes, so caches built by the old code are not reused.
CUSTOMISATION = 1

# Timers that would start apt, dpkg or filesystem jobs in the background while
# a test runs (apt-daily takes the dpkg lock a test's apt-get needs).
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)

# What a host gets beyond systemd-nspawn's defaults: CAP_NET_ADMIN, which
# nftables and route changes need (nspawn grants it by itself only with
# --private-network, which a host in a given namespace cannot use).
CAPABILITIES = ("CAP_NET_ADMIN",)

# Commands run in the container get this environment, not pytest's.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}

_counter = itertools.count()


class HostError(RuntimeError):
    """A container could not be built, booted, reached or stopped."""


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until true; at the deadline raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------- rootfs


def recipe_name() -> str:
    """The cache directory name: changes whenever what goes into the rootfs changes."""
    recipe = {
        "suite": SUITE,
        "variant": "minbase",
        "packages": sorted(PACKAGES),
        "customisation": CUSTOMISATION,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"rootfs-{SUITE}-{digest[:12]}"


def ensure_rootfs(progress: Callable[[str], None] | None = None) -> Path:
    """Return the cached rootfs, building it first if this machine has none.

    A rootfs is only ever visible under its final name once complete: it is
    built in a temporary directory and renamed. An flock serialises builders,
    so a second pytest process waits for the first one's build and reuses it.
    """
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    target = CACHE_DIR / recipe_name()
    if target.is_dir():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # another process built it while we waited
            return target
        _build_rootfs(target, say)
    return target


def _build_rootfs(target: Path, say: Callable[[str], None]) -> None:
    staging = target.with_name(f".{target.name}.building")
    log = target.with_name(f"{target.name}.log")
    _remove_tree(staging)  # left by an interrupted build; we hold the lock
    say(f"plumb: building test rootfs {target} with debootstrap (about a minute, once)")
    started = time.monotonic()
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(staging),
        MIRROR,
    ]
    try:
        with open(log, "w") as out:
            code = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=1800
            ).returncode
        if code != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
            raise HostError(f"{' '.join(argv)}: exit code {code}; end of {log}:\n{tail}")
        _customise(staging)
        staging.rename(target)
    except BaseException:
        _remove_tree(staging)
        raise
    say(f"plumb: test rootfs ready in {time.monotonic() - started:.0f}s")


def _customise(root: Path) -> None:
    """Make the debootstrap result a quiet, offline, identity-less test host."""
    # apt must never reach the internet from a test host: tests add their own
    # `deb [trusted=yes] file:/srv/repo ./` source, and only that.
    (root / "etc/apt/sources.list").write_text(
        "# Plumb test host: no network sources. Tests add local file: repositories.\n"
    )
    for entry in (root / "etc/apt/sources.list.d").iterdir():
        entry.unlink()
    # Package indexes of the mirror and the downloaded .debs are dead weight
    # (~100 MB) once sources.list is empty.
    for directory in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for entry in (root / directory).iterdir():
            if entry.is_file():
                entry.unlink()
    for cache in (root / "var/cache/apt").glob("*.bin"):
        cache.unlink()
    # An empty machine-id makes systemd use a fresh transient id on every boot
    # (from nspawn) without treating it as a first boot, which would run the
    # interactive systemd-firstboot. dbus falls back to /etc/machine-id.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # Without /etc/hostname the hostname is the unique machine name nspawn sets;
    # debootstrap copied the build machine's name here.
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost\n")
    for unit in MASKED_UNITS:
        (root / "etc/systemd/system/timers.target.wants" / unit).unlink(missing_ok=True)
        mask = root / "etc/systemd/system" / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")


def _remove_tree(path: Path) -> None:
    """Delete ``path``, unmounting first whatever an interrupted debootstrap left mounted in it."""
    prefix = str(path) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", name="systemd_rootfs")
def systemd_rootfs_fixture(pytestconfig: pytest.Config) -> Path:
    """The cached rootfs; the first test that needs it builds it (about a minute, once).

    Use it from a test module or conftest with
    ``from tests.hosts.systemd_host import systemd_rootfs_fixture  # noqa: F401``.
    """
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    # Show the build's progress although pytest captures output.
    with capture.global_and_fixture_disabled():
        for name in sweep_orphans():
            print(f"plumb: stopped {name}, left running by a killed test run", file=sys.stderr)
        return ensure_rootfs()


# ---------------------------------------------------------------------- hosts

# A host's name: "plumb-<pid of the test process>-<counter>".
_HOST_NAME = re.compile(r"plumb-(\d+)-\d+")


def _cgroup_hierarchies() -> tuple[list[Path], Path]:
    """Where a host's cgroup goes: (every hierarchy to create it in, the cgroup2 one).

    A hybrid host (like the development VM) has the named v1 ``systemd``
    hierarchy plus cgroup2 at ``unified``; a pure cgroup2 host has only the root.
    """
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base], base
    if (base / "unified/cgroup.controllers").exists() and (base / "systemd").is_dir():
        return [base / "systemd", base / "unified"], base / "unified"
    raise HostError("unsupported cgroup layout: need cgroup2 at /sys/fs/cgroup or its unified/")


class SystemdHost:
    """A booted systemd container; use as a context manager or call start()/stop().

    ``binds``/``binds_ro`` are ``(host_path, container_path)`` pairs. ``netns``
    names a namespace under /run/netns owned by the caller; without one the
    host gets a throwaway namespace with only ``lo``. Either way it is never
    the test machine's own: start() refuses that. ``capabilities`` are granted
    on top of nspawn's defaults (``capabilities=()``: a host without
    CAP_NET_ADMIN, as a container started without it).
    """

    def __init__(
        self,
        rootfs: Path,
        *,
        netns: str | None = None,
        binds: Sequence[tuple[str | os.PathLike[str], str]] = (),
        binds_ro: Sequence[tuple[str | os.PathLike[str], str]] = (),
        capabilities: Sequence[str] = CAPABILITIES,
        boot_timeout: float = 60,
    ) -> None:
        self.rootfs = rootfs
        self.name = f"plumb-{os.getpid()}-{next(_counter)}"
        self.netns = netns or self.name
        self._own_netns = netns is None
        self._binds = [f"--bind={_bind(h, c)}" for h, c in binds]
        self._binds += [f"--bind-ro={_bind(h, c)}" for h, c in binds_ro]
        self._capabilities = [f"--capability={','.join(capabilities)}"] if capabilities else []
        self._boot_timeout = boot_timeout
        hierarchies, unified = _cgroup_hierarchies()
        self._cgroups = [h / self.name for h in hierarchies]
        self._unified = unified / self.name
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._init_pid: int | None = None

    @property
    def init_pid(self) -> int:
        """The container's PID 1, as seen from the machine running the tests."""
        if self._init_pid is None:
            raise HostError(f"{self.name} is not running")
        return self._init_pid

    def __enter__(self) -> SystemdHost:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle

    def start(self) -> None:
        """Boot the container and return once systemd reports ``running``."""
        try:
            self._launch()
            self._wait_until_running(time.monotonic() + self._boot_timeout)
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        if self._own_netns:
            run(["ip", "netns", "add", self.netns])
            run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        _refuse_the_machines_netns(self.netns)
        for cgroup in self._cgroups:
            (cgroup / "exec").mkdir(parents=True)
        # nspawn joins the host's cgroups before it starts (so nothing escapes
        # them), and runs in a private mount namespace with its own
        # /run/systemd/nspawn, so its bookkeeping there vanishes with it.
        script = (
            f"{_join_cgroups(self._cgroups)}mkdir -p /run/systemd/nspawn\n"
            "mount -t tmpfs tmpfs /run/systemd/nspawn\n"
            'exec "$@"\n'
        )
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.rootfs}",
            "--volatile=overlay",
            "--boot",
            "--keep-unit",  # stay in the cgroup made above
            "--register=no",  # there is no machined on a machine without systemd
            f"--network-namespace-path=/run/netns/{self.netns}",
            f"--machine={self.name}",
            "--console=read-only",  # boot messages go to console.log for errors
            *self._capabilities,
            *self._binds,
        ]
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
        # Several hosts boot from one rootfs at once; nspawn would otherwise
        # take an exclusive lock on it.
        env = {**CONTAINER_ENV, "SYSTEMD_NSPAWN_LOCK": "0"}
        with open(self._workdir / "console.log", "wb") as console:
            self._proc = subprocess.Popen(
                [*argv, "sh", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def _wait_until_running(self, deadline: float) -> None:
        self._init_pid = self._wait_for_init(deadline)
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostError(f"{self.name} did not finish booting:\n{self._console_tail()}")
            # --wait blocks until boot finishes; it fails at once while the
            # manager's socket is not up yet, so loop on that.
            try:
                result = self.run(
                    "systemctl", "is-system-running", "--wait", check=False, timeout=remaining
                )
            except CommandFailed as exc:
                jobs = self.run("systemctl", "list-jobs", check=False, timeout=10).stdout
                raise HostError(
                    f"{self.name} did not finish booting: {exc}\n"
                    f"--- jobs still queued ---\n{jobs}\n"
                    f"--- console ---\n{self._console_tail()}"
                ) from exc
            state = result.stdout.strip()
            if state == "running":
                return
            if state == "degraded":
                raise HostError(f"{self.name} booted degraded:\n{self._failed_units()}")
            if state in ("maintenance", "stopping"):
                raise HostError(f"{self.name} is {state}:\n{self._console_tail()}")
            time.sleep(0.02)

    def _wait_for_init(self, deadline: float) -> int:
        """Find the container's PID 1: the process in our cgroup that is PID 1 in its namespace."""
        while time.monotonic() < deadline:
            self._check_alive()
            for pid in _pids_in(self._unified):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                nspids = next(
                    (ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), []
                )
                if len(nspids) > 1 and nspids[-1] == "1":
                    return pid
            time.sleep(0.01)
        raise HostError(f"{self.name}: no init process appeared:\n{self._console_tail()}")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise HostError(
                f"{self.name}: systemd-nspawn exited with {self._proc.returncode}:\n"
                f"{self._console_tail()}"
            )

    def stop(self, timeout: float = 10) -> None:
        """Power the container off, kill whatever is left and remove all it made. Idempotent."""
        try:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                # nspawn turns SIGTERM into an orderly poweroff of the container.
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
            self._kill_cgroups()
            if proc is not None:
                proc.wait(timeout=timeout)  # it was in the cgroup, so it is dead now
            self._remove_cgroups(timeout)
        finally:
            self._proc = None
            self._init_pid = None
            if self._own_netns and Path("/run/netns", self.netns).exists():
                run(["ip", "netns", "delete", self.netns], check=False)
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def _kill_cgroups(self) -> None:
        _kill_tree(self._unified, self.name)

    def _remove_cgroups(self, timeout: float) -> None:
        _remove_trees(self._cgroups, timeout)

    # -- inside the container

    def run(
        self,
        *argv: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the container (all its namespaces) and capture its output.

        The command runs in the host's ``exec`` cgroup, so stop() kills
        anything it leaves behind. It keeps the test machine's capabilities
        (nsenter changes none), so a test can make out-of-band changes in a
        host booted without CAP_NET_ADMIN; the container's own processes (its
        units, the agent) have only what the container was granted.
        """
        execs = [cgroup / "exec" for cgroup in self._cgroups]
        wrapper = ["sh", "-c", f'{_join_cgroups(execs)}exec "$@"', "sh"]
        nsenter = ["nsenter", f"--target={self.init_pid}", "--all", "--"]
        try:
            return run(
                [*wrapper, *nsenter, *argv],
                input=input,
                check=check,
                timeout=timeout,
                env={**CONTAINER_ENV, **(env or {})},
                on_timeout=_kill_all_but_nsenter,
            )
        except CommandFailed as exc:
            # Name the command as the test wrote it, not the nsenter plumbing.
            where = [f"{self.name}:", *argv]
            raise CommandFailed(where, exc.returncode, exc.stdout, exc.stderr, exc.note) from None

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to ``path`` in the container, creating parent directories.

        This goes through a process inside the container rather than
        /proc/PID/root, where absolute symlinks would resolve on the test machine.
        """
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        self.run("sh", "-c", script, "sh", path, f"{mode:o}", input=text)

    def journal(self, unit: str) -> str:
        """The unit's journal, for failure messages."""
        result = self.run("journalctl", "--unit", unit, "--no-pager", "--quiet", check=False)
        return result.stdout + result.stderr

    def _failed_units(self) -> str:
        units = self.run("systemctl", "--failed", "--plain", "--no-legend", check=False).stdout
        parts = [units]
        for line in units.splitlines():
            if line.split():
                parts.append(self.journal(line.split()[0]))
        return "\n".join(parts)

    def _console_tail(self, lines: int = 40) -> str:
        if self._workdir is None:
            return ""
        log = self._workdir / "console.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "".join(text.splitlines(True)[-lines:])


def _refuse_the_machines_netns(netns: str) -> None:
    """HostError if ``netns`` is the namespace of the test machine (``ip netns attach``
    can name it): a host with CAP_NET_ADMIN there could change the machine's firewall."""
    try:
        given = os.stat(Path("/run/netns", netns))
    except OSError as exc:
        raise HostError(f"no network namespace {netns!r} under /run/netns: {exc}") from exc
    for machine in ("/proc/self/ns/net", "/proc/1/ns/net"):
        try:
            own = os.stat(machine)
        except OSError:
            continue  # PID 1 may be out of reach in a sandbox; ours never is
        if (given.st_dev, given.st_ino) == (own.st_dev, own.st_ino):
            raise HostError(
                f"network namespace {netns!r} is the test machine's own ({machine}); "
                "a test host must never run in it"
            )


def _bind(host: str | os.PathLike[str], container: str) -> str:
    source = os.fspath(host)
    # nspawn separates the two paths with ':'; refusing beats escaping here.
    if ":" in source or ":" in container:
        raise ValueError(f"bind paths must not contain ':': {source!r} -> {container!r}")
    return f"{source}:{container}"


def _kill_all_but_nsenter(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a timed-out command in the container, but not the nsenter that waits for it.

    nsenter forks the command into the container's PID namespace. Killed
    first, nsenter would leave its child to the test machine's PID 1, which may
    never reap it (the sandbox's init here does not), and that zombie would keep
    the container's shutdown waiting. Killed without nsenter, the command's
    processes are reaped by nsenter and by the container's init.
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The fields after "(comm)" are: state, ppid, pgrp, ...
            group = int(stat.read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(stat.parent.name)
        if group == proc.pid and pid != proc.pid:  # the session run() started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _join_cgroups(cgroups: Sequence[Path]) -> str:
    """Shell lines that move the shell itself into ``cgroups`` (before it execs)."""
    return "".join(f"echo $$ > {shlex.quote(str(c / 'cgroup.procs'))}\n" for c in cgroups)


def _kill_tree(unified: Path, name: str) -> None:
    """Kill every process in the cgroup2 subtree ``unified`` and wait until it is empty."""
    if not unified.exists():
        return
    # cgroup.kill kills the whole subtree atomically, including processes
    # forking while we kill; the v1 tree holds the same processes.
    kill = unified / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    else:  # kernels before 5.14
        for pid in _pids_in(unified):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: "populated 0" in (unified / "cgroup.events").read_text(),
        10,
        f"processes of {name} to exit",
    )


def _remove_trees(cgroups: Sequence[Path], timeout: float) -> None:
    for top in cgroups:
        if not top.exists():
            continue
        # Bottom-up: a cgroup can only be removed once it has no children.
        subtree = [top, *(d for d in top.rglob("*") if d.is_dir())]
        for directory in sorted(subtree, reverse=True):
            wait_for(partial(_try_rmdir, directory), timeout, f"removal of {directory}")


def sweep_orphans() -> list[str]:
    """Stop hosts whose test process is gone (SIGKILLed, an interrupted CI job); their names.

    A host's cgroup (and its own network namespace, if it made one) is named
    ``plumb-<pid>-<n>`` after the pytest process that booted it, so a host
    whose process no longer exists can only be an orphan. Hosts of a test
    process that is still running, here or in parallel, are left alone.
    """
    hierarchies, unified = _cgroup_hierarchies()
    swept = []
    for cgroup in sorted(unified.glob("plumb-*")):
        match = _HOST_NAME.fullmatch(cgroup.name)
        if match is None or Path(f"/proc/{match.group(1)}").exists():
            continue
        _kill_tree(cgroup, cgroup.name)
        _remove_trees([h / cgroup.name for h in hierarchies], timeout=10)
        if Path(f"/run/netns/{cgroup.name}").exists():
            run(["ip", "netns", "delete", cgroup.name], check=False)
        for workdir in Path(tempfile.gettempdir()).glob(f"{cgroup.name}-*"):
            shutil.rmtree(workdir, ignore_errors=True)
        swept.append(cgroup.name)
    return swept


def _pids_in(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for procs in cgroup.rglob("cgroup.procs"):
        try:
            pids += [int(pid) for pid in procs.read_text().split()]
        except OSError:
            continue  # the cgroup went away while we walked
    return pids


def _try_rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # still busy: the last process is still exiting
    return True
