#!/usr/bin/env python3
"""Build Plumb's packages: the agent and the server, as .deb (dpkg-deb) and .rpm (rpmbuild).

    python3 packaging/build.py deb --component agent  --out dist/
    python3 packaging/build.py deb --component server --out dist/
    python3 packaging/build.py rpm --component agent  --out dist/
    python3 packaging/build.py tree --component agent --out /tmp/stage   # the file tree only

Each package is self-contained under /opt/plumb-<component>: Plumb and its
Python dependencies are installed there with ``pip install --target`` (from
the package index, as wheels only: nothing is compiled on the build host), and
run by the system's own ``/usr/bin/python3 -I``, so nothing in the host's
Python can shadow them and nothing of theirs can break the host's Python
programs. The agent and the server get separate trees, so one host can run
both, and the agent's leaves out what only the server needs.

The wheels are CPython 3.11 builds for this machine's architecture, which is
why the packages depend on python3 (>= 3.11), python3 (<< 3.12): Debian 12's
and RHEL 9-family hosts with python3.11. Byte code is compiled at build time
(unchecked hashes: the files never change between upgrades of the package), so
the agent never writes into /opt at run time and dpkg/rpm own every file.

Progress goes to stderr; the path of each built package is printed on stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "packaging"

# What each component's tree holds: the pyproject extras it installs and the
# commands it puts in /usr/bin. The agent needs no extras (see pyproject.toml).
COMPONENTS = {
    "agent": {
        "extras": "",
        "commands": {"plumb-agent": "agent.main"},
        # The one wheel holds every package; the agent never imports the server.
        "drop": ["server"],
        "summary": "Plumb configuration management agent",
        "description": "Enforces this host's Plumb catalog (files, packages, services,\n"
        "firewall rules, routes), repairs drift and reports to the Plumb server.",
    },
    "server": {
        "extras": "[server]",
        "commands": {"plumb-server": "server.main", "plumb": "server.cli"},
        "drop": [],
        "summary": "Plumb configuration management server and operator CLI",
        "description": "Stores manifests, enrolls agents through its own CA, distributes\n"
        "signed catalogs over mutual TLS and keeps drift and compliance reports.",
    },
}


# zstd at level 12, for both formats: within 20% of xz's size (~14 MB for the
# agent), in a tenth of the time (2-3 s instead of 20-25 s per package on two
# cores: test sessions build several) and unpacked several times faster on every
# node. Every host the packages can run on reads it: they need python3.11, so
# Debian 12 (dpkg >= 1.21.18) or the RHEL 9 family (rpm >= 4.14).
DEB_COMPRESSION = ("-Zzstd", "-z12")
RPM_PAYLOAD = "w12.zstdio"


def log(message: str) -> None:
    print(f"build: {message}", file=sys.stderr, flush=True)


def run(*argv: str | Path, cwd: Path | None = None) -> None:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(
            f"build: {' '.join(map(str, argv))} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


# --- the file tree -------------------------------------------------------------


def build_tree(component: str, stage: Path) -> None:
    """Everything the package installs, laid out under ``stage`` as it will be on the host."""
    spec = COMPONENTS[component]
    prefix = Path("opt") / f"plumb-{component}"
    lib = stage / prefix / "lib"
    with tempfile.TemporaryDirectory() as tmp:
        log("building the plumb wheel")
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp, REPO)
        (wheel,) = Path(tmp).glob("plumb-*.whl")
        log(f"installing plumb{spec['extras']} and its dependencies into /{prefix}/lib")
        run(
            sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
            "--only-binary=:all:", "--no-warn-script-location",
            "--target", lib, f"{wheel}{spec['extras']}",
        )  # fmt: skip
    # pip's own console scripts point at the build host's interpreter.
    shutil.rmtree(lib / "bin", ignore_errors=True)
    for package in spec["drop"]:
        shutil.rmtree(lib / package)
    log("compiling byte code")
    run(
        sys.executable, "-m", "compileall", "-q", "-j", "0",
        "--invalidation-mode", "unchecked-hash", "-d", f"/{prefix}/lib", lib,
    )  # fmt: skip
    for command, module in spec["commands"].items():
        launcher = stage / prefix / "bin" / command
        launcher.parent.mkdir(parents=True, exist_ok=True)
        launcher.write_text(
            # -I: ignore PYTHON* variables and the user's site directory; -B:
            # never write byte code into /opt (it is compiled at build time).
            "#!/usr/bin/python3 -IB\n"
            f'"""{command}: Plumb, self-contained in /{prefix} (see {module})."""\n'
            "import sys\n\n"
            f'sys.path.insert(0, "/{prefix}/lib")\n'
            f"from {module} import run  # noqa: E402\n\n"
            "run()\n"
        )
        launcher.chmod(0o755)
        link = stage / "usr/bin" / command
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"/{prefix}/bin/{command}")
    for source, target in {
        f"plumb-{component}.service": "usr/lib/systemd/system",
        f"{component}.toml": "etc/plumb",
    }.items():
        path = HERE / "files" / source
        if path.exists():
            (stage / target).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, stage / target / source)
    doc = stage / "usr/share/doc" / f"plumb-{component}"
    doc.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "README.md", doc / "README.md")
    for path in stage.rglob("*"):  # deterministic modes whatever the build host's umask
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)


def tree_bytes(stage: Path) -> int:
    return sum(p.stat().st_size for p in stage.rglob("*") if p.is_file() and not p.is_symlink())


# --- .deb ------------------------------------------------------------------------


def deb_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def staged(component: str, stage: Path, tree: Path | None) -> None:
    """Lay the component's tree out in ``stage``: built now, or copied from ``tree``."""
    if tree is None:
        build_tree(component, stage)
    else:
        shutil.copytree(tree, stage, symlinks=True)


def build_deb(
    component: str, version: str, revision: str, out: Path, tree: Path | None = None
) -> Path:
    spec = COMPONENTS[component]
    name = f"plumb-{component}"
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "root"
        staged(component, stage, tree)
        control = stage / "DEBIAN"
        control.mkdir()
        description = "\n".join(f" {line}" for line in str(spec["description"]).splitlines())
        depends = "python3 (>= 3.11), python3 (<< 3.12), systemd"
        # The firewall kind needs nft; a host managed for files and packages
        # alone does not, and the kind says "unavailable" without it.
        recommends = "nftables" if component == "agent" else ""
        if component == "server":
            depends += ", adduser"
        fields = {
            "Package": name,
            "Version": f"{version}-{revision}",
            "Architecture": deb_arch(),
            "Maintainer": "Plumb maintainers <maintainers@plumb.invalid>",
            "Installed-Size": str(tree_bytes(stage) // 1024),  # in KiB
            "Depends": depends,
            "Recommends": recommends,
            "Section": "admin",
            "Priority": "optional",
            "Description": f"{spec['summary']}\n{description}",
        }
        (control / "control").write_text(
            "".join(f"{key}: {value}\n" for key, value in fields.items() if value)
        )
        conffiles = sorted(
            "/" + str(p.relative_to(stage)) for p in (stage / "etc").rglob("*") if p.is_file()
        )
        (control / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
        for script in ("postinst", "prerm", "postrm"):
            source = HERE / "deb" / f"{name}.{script}"
            if source.exists():
                shutil.copy(source, control / script)
                (control / script).chmod(0o755)
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{name}_{version}-{revision}_{deb_arch()}.deb"
        log(f"packing {target.name}")
        run("dpkg-deb", "--root-owner-group", *DEB_COMPRESSION, "--build", stage, target)
    return target


# --- .rpm ------------------------------------------------------------------------


def build_rpm(
    component: str, version: str, revision: str, out: Path, tree: Path | None = None
) -> Path:
    """rpmbuild from packaging/rpm/plumb-<component>.spec over the same file tree."""
    name = f"plumb-{component}"
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        stage = top / "stage"
        staged(component, stage, tree)
        # RPM versions may not contain '-'; a local build tag like 0.1.0+test is fine.
        rpm_version = re.sub(r"[^A-Za-z0-9._+~]", "_", version)
        log(f"rpmbuild {name}-{rpm_version}-{revision}")
        run(
            "rpmbuild", "-bb", "--quiet",
            "--define", f"_topdir {top}",
            "--define", f"stage {stage}",
            "--define", f"version {rpm_version}",
            "--define", f"release {revision}",
            # The tree already holds compiled byte code; the spec's %files owns it.
            "--define", "__brp_python_bytecompile %{nil}",
            "--define", "__os_install_post %{nil}",
            "--define", "_build_id_links none",
            "--define", f"_binary_payload {RPM_PAYLOAD}",
            HERE / "rpm" / f"{name}.spec",
        )  # fmt: skip
        (built,) = (top / "RPMS").rglob(f"{name}-*.rpm")
        out.mkdir(parents=True, exist_ok=True)
        target = out / built.name
        shutil.copy(built, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="packaging/build.py",
        description="Build Plumb's self-contained agent and server packages.",
        epilog=__doc__.split("\n\n", 2)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=("deb", "rpm", "tree"))
    parser.add_argument("--component", choices=sorted(COMPONENTS), default="agent")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="default: dist/")
    parser.add_argument(
        "--version", default=project_version(), help="default: pyproject's (%(default)s)"
    )
    parser.add_argument(
        "--revision", default="1", help="package build number, bump for a rebuild (default: 1)"
    )
    parser.add_argument(
        "--tree",
        type=Path,
        help="pack this tree (from `build.py tree`) instead of building one: "
        "several packages of one build, e.g. .deb and .rpm",
    )
    args = parser.parse_args(argv)
    if args.format == "tree":
        if args.out.exists() and any(args.out.iterdir()):
            parser.error(f"{args.out} is not empty")
        build_tree(args.component, args.out)
        print(args.out)
    elif args.format == "deb":
        print(build_deb(args.component, args.version, args.revision, args.out, args.tree))
    else:
        print(build_rpm(args.component, args.version, args.revision, args.out, args.tree))
    return 0


if __name__ == "__main__":
    sys.exit(main())
