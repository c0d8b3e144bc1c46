"""Small real packages and local repositories, built in the test.

apt, in a :class:`~tests.hosts.systemd_host.SystemdHost`::

    debs = [build_deb(tmp_path, "plumb-hello", v, files={"/usr/share/plumb-hello/v": v})
            for v in ("1.0", "2.0")]
    repo = apt_repo(tmp_path / "repo", debs)      # bind-mount at /srv/repo, then
    # echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list.d/plumb-test.list

dnf, into a throwaway installroot on the test machine itself::

    repo = rpm_repo(tmp_path / "repo", [build_rpm(tmp_path, "plumb-hello", "1.0")])
    root = dnf_root(tmp_path / "dnf", repo)
    root.dnf("install", "plumb-hello-1.0")
    assert root.installed("plumb-hello") == "1.0-1"

Files whose text starts with ``#!`` are installed executable (0755), others 0644.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from tests.hosts import run

MAINTAINER = "Plumb tests <tests@plumb.invalid>"


def _mode(text: str) -> int:
    return 0o755 if text.startswith("#!") else 0o644


def _populate(root: Path, files: Mapping[str, str]) -> None:
    for path, text in files.items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(_mode(text))


# ------------------------------------------------------------------------ apt


def build_deb(
    workdir: Path,
    name: str,
    version: str,
    *,
    depends: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
    postinst: str | None = None,
    triggers: Sequence[str] = (),
    description: str = "Plumb test package",
) -> Path:
    """Build ``workdir/<name>_<version>_all.deb``; ``depends`` entries are Debian
    relations such as ``"plumb-lib (>= 1.0)"``; ``postinst`` is a shell script body;
    ``triggers`` are lines of DEBIAN/triggers (``"interest-noawait /usr/share/x"``):
    dpkg then runs the postinst with ``triggered`` when another package changes them."""
    tree = workdir / "deb-build" / f"{name}_{version}"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "DEBIAN").mkdir(parents=True)
    control = [
        f"Package: {name}",
        f"Version: {version}",
        "Architecture: all",
        "Section: misc",
        "Priority: optional",
        f"Maintainer: {MAINTAINER}",
    ]
    if depends:
        control.append(f"Depends: {', '.join(depends)}")
    control.append(f"Description: {description}")
    (tree / "DEBIAN/control").write_text("\n".join(control) + "\n")
    if postinst is not None:
        script = tree / "DEBIAN/postinst"
        script.write_text(f"#!/bin/sh\nset -e\n{postinst}\n")
        script.chmod(0o755)
    if triggers:
        (tree / "DEBIAN/triggers").write_text("".join(f"{line}\n" for line in triggers))
    _populate(tree, files or {})
    # Debian spells an epoch's ':' as %3a in file names.
    deb = workdir / f"{name}_{version.replace(':', '%3a')}_all.deb"
    # --root-owner-group: files are root's in the package without fakeroot.
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)])
    return deb


def apt_repo(directory: Path, debs: Sequence[Path]) -> Path:
    """Make ``directory`` a flat apt repository holding ``debs`` (all versions).

    Use it as ``deb [trusted=yes] file:<where it is mounted> ./``. A Release
    file (unsigned) is written too: without one, ``apt-get update`` probes
    the repository over and over and fills its output with "Ign:" lines.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy2(deb, directory / deb.name)
    index = run(["dpkg-scanpackages", "--multiversion", "."], cwd=str(directory)).stdout
    (directory / "Packages").write_text(index)
    data = index.encode()
    (directory / "Release").write_text(
        "Origin: plumb-test\nLabel: plumb-test\nArchitectures: all amd64 arm64\n"
        f"Date: {formatdate(usegmt=True)}\n"
        f"SHA256:\n {hashlib.sha256(data).hexdigest()} {len(data)} Packages\n"
    )
    return directory


# ------------------------------------------------------------------------ dnf

SPEC = """\
Name: {name}
Version: {version}
Release: {release}
Summary: {summary}
License: MIT
BuildArch: noarch
# No automatic dependencies: a script's '#!/bin/sh' would otherwise require
# /bin/sh, which an empty installroot does not have.
AutoReqProv: no
{requires}
%description
{summary}

%install
cp -a {tree}/. %{{buildroot}}/

%files
{files}
"""


def _rpm_env(home: Path) -> dict[str, str]:
    """An environment whose rpm keeps its database in <root>/var/lib/rpm.

    Debian's rpm defaults %_dbpath to ~/.rpmdb, so a database's location would
    depend on $HOME; a private HOME with its own .rpmmacros pins it, for dnf
    and rpm alike, without touching the machine's /etc/rpm.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def build_rpm(
    workdir: Path,
    name: str,
    version: str,
    release: str = "1",
    *,
    requires: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
    summary: str = "Plumb test package",
) -> Path:
    """Build a noarch rpm with rpmbuild and return its path; ``requires`` entries
    are rpm dependencies such as ``"plumb-lib >= 1.0"``."""
    top = workdir / "rpmbuild"
    tree = workdir / "rpm-build" / f"{name}-{version}-{release}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    files = files or {}
    _populate(tree, files)
    spec = top / "SPECS" / f"{name}-{version}-{release}.spec"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        SPEC.format(
            name=name,
            version=version,
            release=release,
            summary=summary,
            requires="".join(f"Requires: {r}\n" for r in requires),
            tree=tree,
            files="\n".join("/" + path.lstrip("/") for path in files),
        )
    )
    run(
        ["rpmbuild", "-bb", "--define", f"_topdir {top}", str(spec)],
        env=_rpm_env(workdir / "rpm-home"),
    )
    return top / "RPMS" / "noarch" / f"{name}-{version}-{release}.noarch.rpm"


def rpm_repo(directory: Path, rpms: Sequence[Path]) -> Path:
    """Make ``directory`` a dnf repository (repodata by createrepo_c) holding ``rpms``."""
    directory.mkdir(parents=True, exist_ok=True)
    for rpm in rpms:
        shutil.copy2(rpm, directory / rpm.name)
    run(["createrepo_c", "--quiet", str(directory)])
    return directory


@dataclass(frozen=True)
class DnfRoot:
    """An installroot that dnf fills from one local repository only, offline.

    Its dnf configuration lives inside the root (``etc/dnf/dnf.conf``,
    ``etc/yum.repos.d/``), where ``dnf --installroot`` looks first, so code
    under test can run plain ``dnf --installroot=ROOT``. Run dnf and rpm with
    ``env`` (or set ``HOME`` to ``env["HOME"]``) so rpm's database is at
    ``ROOT/var/lib/rpm``; :meth:`dnf` and :meth:`rpm` do.
    """

    root: Path
    env: Mapping[str, str]

    @property
    def argv(self) -> list[str]:
        # --releasever: dnf cannot detect one in an empty root and says so on
        # every call; nothing here uses $releasever.
        return ["dnf", f"--installroot={self.root}", "--releasever=1", "-y"]

    def dnf(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.argv, *args], env=self.env, check=check)

    def rpm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["rpm", f"--root={self.root}", *args], env=self.env, check=check)

    def installed(self, name: str) -> str | None:
        """``VERSION-RELEASE`` of ``name`` in the root, or None if it is not installed."""
        result = self.rpm("-q", "--queryformat", "%{VERSION}-%{RELEASE}", name, check=False)
        return result.stdout if result.returncode == 0 else None


def dnf_root(workdir: Path, repo: Path) -> DnfRoot:
    """A fresh installroot ``workdir/root`` whose only repository is ``repo``."""
    root = workdir / "root"
    (root / "etc/yum.repos.d").mkdir(parents=True)
    (root / "etc/dnf").mkdir(parents=True)
    # metadata_expire=0: a test may rebuild the repository between two dnf
    # calls, and dnf would otherwise trust its cached metadata.
    (root / "etc/yum.repos.d/plumb-test.repo").write_text(
        f"[plumb-test]\nname=plumb test\nbaseurl=file://{repo.resolve()}\n"
        "gpgcheck=0\nmetadata_expire=0\n"
    )
    # The root's reposdir holds only our repository, so nothing goes to the
    # network and no --disablerepo='*' is needed. skip_if_unavailable and best
    # are lenient in Debian's /etc/dnf/dnf.conf, which would turn a broken test
    # repository into a silent no-op or an older version. plugins: none of the
    # test machine's.
    (root / "etc/dnf/dnf.conf").write_text(
        "[main]\ngpgcheck=0\ninstall_weak_deps=False\ntsflags=nodocs\n"
        "skip_if_unavailable=False\nbest=True\nplugins=False\n"
    )
    return DnfRoot(root=root, env=_rpm_env(workdir / "home"))
