"""The ``package`` kind: a package installed (at a version, or the newest) or absent.

Spec::

    kind: package
    name: web-server
    spec:
      package: nginx
      version: "1.22.1-9"    # a pin; "latest" follows the repositories; omitted: any version
      state: present          # or absent

The provider is chosen by the host's facts, not guessed from which tools
happen to be installed: apt/dpkg on the Debian family, dnf/rpm on the RHEL
family (``/etc/os-release``'s ID and ID_LIKE, under the context's root);
anything else is ``unavailable`` with the reason.

Several package resources in one run are changed in ONE transaction
(:meth:`PackageKind.apply_batch`, called by the engine), which is what apt and
dnf are built for: dependencies are resolved once and a set of packages that
only works together is never half-installed. (apt takes installs and removals
in one command; dnf cannot, so there removals are a transaction of their own,
before the installs.) If the transaction fails, the engine reads each package
again and applies those still different one by one, so one bad package fails
alone with the package manager's message and the rest still converge.

Everything runs non-interactively (no prompts, the admin's changed
configuration files are kept). Before changing anything the apt provider
finishes whatever an interrupted run left half-configured
(``dpkg --configure -a``), so a run killed mid-way is repaired by the next one.

A package manager busy with someone else's transaction (its lock held: an
operator's apt-get, unattended-upgrades, another rpm) is not a failure of the
resource: the command fails fast and the kind raises
:class:`~modules.errors.Busy`, which the engine retries with back-off within
the resource's timeout. A resource gets 600 s by default (``timeout_s``):
downloads and maintainer scripts can be slow, and a package manager killed
mid-transaction leaves work for the next run.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from modules.base import Batchable, Change, Context, Identity, Kind, Removable, Watchable
from modules.errors import ApplyError, Busy, OperationError, ReadError, SpecError, Unavailable
from modules.registry import register
from modules.spec import Field, Presence, SpecReader

LATEST = "latest"
# Package names as Debian and RPM allow them (a superset of both, without
# shell or option characters: a name never starts with '-').
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.~:_-]*")
# apt's lists are refreshed (apt-get update) when older than this and a
# resource asks for a version they may not know yet.
LISTS_MAX_AGE_S = 3600.0


@dataclasses.dataclass(frozen=True)
class PackageSpec:
    package: str
    state: Presence = Presence.PRESENT
    #: None: any version; LATEST: the newest the repositories offer; else a pin.
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class PackageState:
    provider: str
    installed: str | None  # the installed version; None when not installed
    #: The version the repositories would install now (read only for "latest" and pins).
    candidate: str | None = None
    #: Whether the pinned version is offered by the repositories.
    pin_available: bool = True


class Provider(Protocol):
    """What the kind needs of a package manager; one per family."""

    name: str

    def installed(self, package: str) -> str | None: ...

    def candidate(self, spec: PackageSpec) -> tuple[str | None, bool]:
        """The version that would be installed for ``spec``, and whether a pin is offered."""
        ...

    def change(self, install: Sequence[PackageSpec], remove: Sequence[str]) -> None:
        """One transaction: install (or move to a pin) ``install``, remove ``remove``."""
        ...

    def database(self) -> tuple[list[Path], list[Path]]:
        """Where a change means the installed set changed (for the watcher):
        files, and directories any entry of which counts."""
        ...


class PackageKind(
    Kind[PackageSpec, PackageState],
    Batchable[PackageSpec, PackageState],
    Watchable[PackageSpec],
    Removable[PackageSpec],
):
    name = "package"
    timeout_s = 600.0
    fields = (
        Field("package", "the package's name", required=True),
        Field("state", "present (default) or absent"),
        Field("version", 'a pin ("1.2-3"), "latest", or not given: any'),
    )

    def parse(self, raw: Mapping[str, Any]) -> PackageSpec:
        reader = SpecReader(raw, self.fields)
        package = reader.string("package", required=True)
        if not _NAME.fullmatch(package):
            raise reader.error("package", f"not a valid package name: {package!r}")
        state = reader.choice("state", Presence, default=Presence.PRESENT)
        version = reader.string(
            "version", hint='quote it, e.g. version: "1.2"; YAML reads 1.2 as a number'
        )
        if version is not None and version != LATEST and not _VERSION.fullmatch(version):
            raise reader.error("version", f'expected a version or "latest", got {version!r}')
        reader.finish()
        if state is Presence.ABSENT and version is not None:
            raise SpecError("version", "not allowed with state: absent")
        return PackageSpec(package, state, version)

    def identities(self, spec: PackageSpec) -> tuple[Identity, ...]:
        return (Identity("package", spec.package),)

    def removal(self, spec: PackageSpec) -> dict[str, Any]:
        return {"package": spec.package, "state": "absent"}

    def read(self, ctx: Context, spec: PackageSpec) -> PackageState:
        provider = provider_for(ctx)
        installed = provider.installed(spec.package)
        if spec.state is Presence.ABSENT or spec.version is None:
            return PackageState(provider.name, installed)
        candidate, offered = provider.candidate(spec)
        return PackageState(provider.name, installed, candidate, offered)

    def diff(self, spec: PackageSpec, state: PackageState) -> list[Change]:
        installed = state.installed
        if spec.state is Presence.ABSENT:
            return [Change("state", installed, "absent")] if installed else []
        if spec.version is None:
            return [] if installed else [Change("state", "absent", "present")]
        if spec.version == LATEST:
            wanted = state.candidate
            if installed and (wanted is None or installed == wanted):
                return []  # nothing newer is offered
            desired = f"{wanted} (latest)" if wanted else "latest (none offered)"
            return [Change("version", installed or "absent", desired)]
        if installed and version_matches(installed, spec.version):
            return []
        desired = spec.version if state.pin_available else f"{spec.version} (not offered)"
        return [Change("version", installed or "absent", desired)]

    def apply(
        self, ctx: Context, spec: PackageSpec, state: PackageState, changes: list[Change]
    ) -> None:
        self.apply_batch(ctx, [(spec, state, changes)])

    def apply_batch(
        self, ctx: Context, items: Sequence[tuple[PackageSpec, PackageState, list[Change]]]
    ) -> None:
        """Every item's changes in one transaction of the host's package manager."""
        install = [spec for spec, _, _ in items if spec.state is Presence.PRESENT]
        remove = [spec.package for spec, _, _ in items if spec.state is Presence.ABSENT]
        provider_for(ctx).change(install, remove)

    def watch(
        self,
        ctx: Context,
        specs: Sequence[PackageSpec],
        on_change: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """The package database changing means something was installed or removed."""
        from modules.pathwatch import watch_paths

        files, directories = provider_for(ctx).database()
        watch_paths(ctx, files, on_change, stop, contents_of=directories)


def version_matches(installed: str, pin: str) -> bool:
    """Whether ``installed`` is what ``pin`` asks for.

    A pin may leave out the epoch (``1:``) and, for rpm, the release
    (``2.0`` matches ``2.0-1``): people pin what they read in ``apt policy``
    or ``dnf list``, which is not always the full version.
    """
    if installed == pin:
        return True
    bare = installed.split(":", 1)[1] if ":" in installed else installed
    return bare == pin or bare.rsplit("-", 1)[0] == pin


# --- choosing the provider ---------------------------------------------------------


def os_release(root: Path) -> dict[str, str]:
    """``/etc/os-release`` (or ``/usr/lib/os-release``) under ``root``, as key → value."""
    for name in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / name).read_text()
        except OSError:
            continue
        pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
        return {key.strip(): value.strip().strip("\"'") for key, value in pairs}
    return {}


def os_family(release: Mapping[str, str]) -> str | None:
    """``debian`` or ``redhat`` from os-release's ID and ID_LIKE; None for anything else."""
    ids = {release.get("ID", ""), *release.get("ID_LIKE", "").split()}
    if ids & {"debian", "ubuntu"}:
        return "debian"
    if ids & {"rhel", "fedora", "centos"}:
        return "redhat"
    return None


# What apt, dpkg, rpm and dnf say when another process holds the lock they
# need: the package manager is busy, not broken.
_LOCKED = re.compile(
    r"Could not get lock"  # apt: lock-frontend, lock, lists/lock, archives/lock
    r"|Unable to acquire the dpkg frontend lock"  # apt
    r"|lock (?:was|is) locked by another process"  # dpkg: its frontend and database locks
    r"|dpkg status database is locked"  # dpkg, older wording
    r"|can't create transaction lock"  # rpm
    r"|database is locked"  # rpm's sqlite database
)


def provider_for(ctx: Context) -> Provider:
    release = os_release(ctx.root)
    family = os_family(release)
    if family == "debian":
        return Apt(ctx)
    if family == "redhat":
        return Dnf(ctx, release.get("VERSION_ID", ""))
    named = release.get("PRETTY_NAME") or release.get("ID") or "no /etc/os-release"
    raise Unavailable(f"no package provider for this host ({named}): apt or dnf families only")


def _run(
    ctx: Context,
    argv: list[str],
    failure: type[OperationError],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    ok: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[str]:
    """``argv`` through the context; ``failure`` (or Busy, if the lock was held) unless ``ok``."""
    result = ctx.run(argv, failure=failure, env=env)
    if result.returncode not in ok:
        raise _refusal(
            result, failure, f"{what} failed (exit {result.returncode})", _essence(result)
        )
    return result


def _refusal(
    result: subprocess.CompletedProcess[str],
    failure: type[OperationError],
    message: str,
    output: str,
) -> OperationError:
    """The error for a command that failed: Busy if it says another holds the lock."""
    if _LOCKED.search(result.stderr + result.stdout):
        return Busy(f"{message}: the package manager is busy (its lock is held)", output)
    return failure(message, output)


def _essence(result: subprocess.CompletedProcess[str]) -> str:
    """What a report should show of a package manager's output: its errors, or its tail."""
    lines = (result.stderr + result.stdout).splitlines()
    errors = [line for line in lines if line.startswith(("E:", "Error", "error:", "dpkg:"))]
    return "\n".join(errors or lines[-8:])


# --- apt / dpkg ------------------------------------------------------------------


# No prompts, keep an admin's edited conffiles, never wait on a debconf
# question or a "services to restart?" dialog.
_APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "APT_LISTCHANGES_FRONTEND": "none",
    "NEEDRESTART_MODE": "a",
}
_APT_OPTIONS = (
    "-y",
    "-q",
    "-o", "Dpkg::Options::=--force-confdef",
    "-o", "Dpkg::Options::=--force-confold",
    # No pseudo-terminal for dpkg: apt would start dpkg in a session of its
    # own for it (setsid), out of reach of the process group that is killed
    # at the deadline, and a dpkg stuck in a maintainer script would hold
    # the lock long after apt-get was killed.
    "-o", "Dpkg::Use-Pty=0",
    # No DPkg::Lock::Timeout: a held lock fails at once and the kind says
    # Busy; the engine waits and retries, within the resource's timeout.
)  # fmt: skip


class Apt:
    """The Debian family: dpkg-query to read, apt-get to change, apt-cache for versions."""

    name = "apt"

    def __init__(self, ctx: Context) -> None:
        if ctx.root != Path("/"):
            # dpkg's --root runs maintainer scripts chrooted, without the
            # host's services: not a faithful install. Refuse, don't pretend.
            raise Unavailable(f"apt manages the host's own packages only, not under {ctx.root}")
        self._ctx = ctx

    def installed(self, package: str) -> str | None:
        result = _run(
            self._ctx,
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", package],
            ReadError,
            "dpkg-query",
            ok=(0, 1),  # 1: dpkg has never heard of it
        )
        status, _, version = result.stdout.partition("|")
        # "ii": installed. "rc" (removed, config files kept) and the rest are absent.
        return version if result.returncode == 0 and status.startswith("ii") else None

    def candidate(self, spec: PackageSpec) -> tuple[str | None, bool]:
        candidate, versions = self._policy(spec.package)
        if (candidate is None or (spec.version not in (None, LATEST, *versions))) and (
            self._refresh_lists()
        ):
            candidate, versions = self._policy(spec.package)
        offered = spec.version in (None, LATEST) or any(
            version_matches(v, spec.version or "") for v in versions
        )
        return candidate, offered

    def change(self, install: Sequence[PackageSpec], remove: Sequence[str]) -> None:
        self._finish_interrupted()
        # One command, one transaction: a trailing '-' asks apt to remove.
        wanted = [_apt_target(spec) for spec in install] + [f"{name}-" for name in remove]
        _run(
            self._ctx,
            ["apt-get", *_APT_OPTIONS, "--allow-downgrades", "install", *wanted],
            ApplyError,
            "apt-get install",
            env=_APT_ENV,
        )

    def database(self) -> tuple[list[Path], list[Path]]:
        # dpkg rewrites status by renaming status-new over it: watch the path.
        return [Path("/var/lib/dpkg/status")], []

    def _policy(self, package: str) -> tuple[str | None, list[str]]:
        """apt's candidate for ``package`` and every version it offers."""
        out = _run(
            self._ctx, ["apt-cache", "policy", package], ReadError, "apt-cache policy"
        ).stdout
        candidate = None
        versions = []
        for line in out.splitlines():
            if line.strip().startswith("Candidate:"):
                value = line.split(":", 1)[1].strip()
                candidate = None if value == "(none)" else value
            elif match := re.fullmatch(r"\s+(?:\*\*\* )?(\S+) (-?\d+)", line):
                versions.append(match.group(1))
        return candidate, versions

    def _refresh_lists(self) -> bool:
        """apt-get update, if the lists are older than LISTS_MAX_AGE_S; whether it ran."""
        try:
            age = time.time() - Path("/var/cache/apt/pkgcache.bin").stat().st_mtime
        except FileNotFoundError:
            age = float("inf")
        if age < LISTS_MAX_AGE_S:
            return False
        _run(self._ctx, ["apt-get", "-q", "update"], ReadError, "apt-get update", env=_APT_ENV)
        return True

    def _finish_interrupted(self) -> None:
        """Configure what a killed dpkg left unpacked, or apt refuses to do anything."""
        # A dpkg killed mid-write leaves its journal in updates/ (apt then
        # refuses with "dpkg was interrupted"); one killed between unpacking
        # and configuring leaves packages that --audit lists.
        journal = Path("/var/lib/dpkg/updates")
        pending = journal.is_dir() and any(journal.iterdir())
        audit = _run(self._ctx, ["dpkg", "--audit"], ApplyError, "dpkg --audit", ok=(0, 1))
        if pending or audit.stdout.strip():
            # Also what another dpkg that is still running looks like (an
            # operator's apt-get between its dpkg calls): then this one finds
            # the lock held and the kind says Busy, which the engine retries.
            _run(
                self._ctx,
                ["dpkg", "--configure", "-a", "--force-confdef", "--force-confold"],
                ApplyError,
                "dpkg --configure -a (finishing an interrupted run)",
                env=_APT_ENV,
            )


def _apt_target(spec: PackageSpec) -> str:
    if spec.version in (None, LATEST):
        return spec.package
    return f"{spec.package}={spec.version}"


# --- dnf / rpm -------------------------------------------------------------------

# dnf's own exit status is judged by Dnf._call, which reads dnf's errors itself.
_ANY_EXIT = tuple(range(-64, 256))
# The main file of each database backend rpm has: sqlite (RHEL 9 on),
# Berkeley DB (RHEL 8), ndb (SUSE). Only the one in use exists.
_RPMDB_FILES = ("rpmdb.sqlite", "Packages", "Packages.db")


class Dnf:
    """The RHEL family: rpm to read, dnf to change and to pick versions. Under a
    context root that is not ``/``, everything happens in that root
    (``--installroot``), whose own repository configuration dnf then reads."""

    name = "dnf"

    def __init__(self, ctx: Context, release: str) -> None:
        self._ctx = ctx
        self._root = ctx.root
        self._rpm = ["rpm"] if ctx.root == Path("/") else ["rpm", "--root", str(ctx.root)]
        self._dnf = ["dnf", "-y", "-q", "--setopt=install_weak_deps=False"]
        if ctx.root != Path("/"):
            # An installroot without a release package cannot tell dnf its
            # release; its os-release can. Release packages provide the major
            # version only (RHEL 9.4's $releasever is "9").
            releasever = release.split(".")[0] or "/"
            self._dnf += [f"--installroot={ctx.root}", f"--releasever={releasever}"]

    def installed(self, package: str) -> str | None:
        result = _run(
            self._ctx,
            [*self._rpm, "-q", "--qf", "%{EPOCH}:%{VERSION}-%{RELEASE}\\n", package],
            ReadError,
            "rpm -q",
            ok=(0, 1),  # 1: not installed, or the database could not be read
        )
        if result.returncode == 0:
            return _rpm_version(result.stdout)
        if result.stderr.strip():
            # "package x is not installed" is said on stdout; errors (a
            # database rpm cannot open) on stderr, with the same exit status.
            raise _refusal(result, ReadError, f"rpm -q {package} failed", result.stderr)
        return None

    def candidate(self, spec: PackageSpec) -> tuple[str | None, bool]:
        # dnf itself picks the newest match of the name (or name-pin), with
        # rpm's version comparison. Installed packages count too: a package
        # newer than every offer is already the latest, as dnf sees it.
        out = self._call(
            ReadError,
            "dnf repoquery",
            "repoquery",
            "--installed",
            "--available",
            "--latest-limit=1",
            "--qf",
            "%{name} %{epoch}:%{version}-%{release}",
            _dnf_target(spec),
        )
        versions = _repoquery_versions(out, spec.package)
        # One line per architecture (multilib); they carry the same version.
        candidate = versions[0] if versions else None
        return candidate, spec.version == LATEST or candidate is not None

    def change(self, install: Sequence[PackageSpec], remove: Sequence[str]) -> None:
        # dnf 4 has no command that both removes and installs and reports a
        # failure (`dnf shell` logs errors and exits 0), so removals are a
        # transaction of their own, first: what they free (a Conflicts:) an
        # install may need. Only what is named goes: a dependency it pulled
        # in may be another resource's package.
        if remove:
            self._call(
                ApplyError,
                "dnf remove",
                "--setopt=clean_requirements_on_remove=False",
                "remove",
                *remove,
            )
        if install:
            # "install" moves an installed package to a pin in either
            # direction, and with best=True to the newest offer, whatever the
            # host's dnf.conf says (best=False would leave it where it is).
            # strict=True: a package dnf cannot find fails the transaction
            # with dnf's message rather than being skipped.
            self._call(
                ApplyError,
                "dnf install",
                "--setopt=best=True",
                "--setopt=strict=True",
                "install",
                *[_dnf_target(spec) for spec in install],
            )

    def database(self) -> tuple[list[Path], list[Path]]:
        # The database file itself, not its directory: a mere reader (rpm -q,
        # the agent's own checks) writes sqlite's -shm and -wal files, so the
        # directory would change on every read. A writer opens the file for
        # writing, and closing it is the change noticed. rpm knows where its
        # database is: /var/lib/rpm on RHEL 9, /usr/lib/sysimage/rpm since Fedora 36.
        evaluated = _run(self._ctx, [*self._rpm, "--eval", "%{_dbpath}"], ReadError, "rpm --eval")
        directory = self._root / evaluated.stdout.strip().lstrip("/")
        return [directory / name for name in _RPMDB_FILES], []

    def _call(self, failure: type[OperationError], what: str, *args: str) -> str:
        result = _run(self._ctx, [*self._dnf, *args], failure, what, ok=_ANY_EXIT)
        if result.returncode != 0:
            message = f"{what} failed (exit {result.returncode})"
            raise _refusal(result, failure, message, _dnf_error(result))
        return result.stdout


def _dnf_target(spec: PackageSpec) -> str:
    if spec.version in (None, LATEST):
        return spec.package
    return f"{spec.package}-{spec.version}"


def _rpm_version(stdout: str) -> str:
    """The version ``rpm -q --qf '%{EPOCH}:%{VERSION}-%{RELEASE}\\n'`` printed.

    Several installed (kernels): the last installed, normally the newest.
    """
    return _bare_epoch(stdout.splitlines()[-1])


def _repoquery_versions(stdout: str, package: str) -> list[str]:
    """The versions in ``repoquery --qf '%{name} %{epoch}:%{version}-%{release}'`` output.

    Only lines of ``package`` itself: dnf also reads ``a-b`` as package ``a``
    at version ``b``.
    """
    pairs = (line.split(" ", 1) for line in stdout.splitlines() if " " in line)
    return [_bare_epoch(version) for name, version in pairs if name == package]


def _bare_epoch(version: str) -> str:
    """Without a zero or missing epoch, as people write versions (and pins)."""
    return version.removeprefix("(none):").removeprefix("0:")


def _dnf_error(result: subprocess.CompletedProcess[str]) -> str:
    """dnf's error: from its "Error:" line on, since a dependency problem is
    an empty "Error:" line followed by the problem, indented."""
    lines = (result.stderr + result.stdout).strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Error:")), None)
    return "\n".join(lines[-8:] if start is None else lines[start:])


register(PackageKind())
