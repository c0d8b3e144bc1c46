"""``plumb-server``: set up a server's data directory, migrate its store, and run it."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import NoReturn

from server import store as store_
from server.config import ServerConfig
from server.errors import PlumbServerError
from server.pki import PKI, ROLE_OPERATOR, cert_pem, issue_keypair, key_pem, write_private

DEFAULT_DATA_DIR = Path(os.environ.get("PLUMB_DATA_DIR", "/var/lib/plumb-server"))

EPILOG = """\
exit codes: 0 success (for migrate: migrated, or already at head), 1 error (the
message says why; a store that is refused or fails to migrate is left as it
was), 2 bad usage.

examples:
  plumb-server init --data-dir /var/lib/plumb-server --san plumb.example.com
  plumb-server run --data-dir /var/lib/plumb-server
  plumb-server migrate --data-dir /var/lib/plumb-server --json
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except PlumbServerError as exc:
        print(f"plumb-server: {exc}", file=sys.stderr)
        return 1


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (plumb-server init --data-dir D).

    Each command gets a parser of its own: argparse shares option objects
    between a parser and its parents, and the defaults set on the top level
    would otherwise overwrite what was given before the command's name.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"where keys, the store and server.toml live "
        f"(default: $PLUMB_DATA_DIR or {DEFAULT_DATA_DIR})",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO level"
    )
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plumb-server",
        description="The Plumb server: CA, enrollment, manifests, reports.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(data_dir=DEFAULT_DATA_DIR, verbose=False)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    init = sub.add_parser(
        "init", parents=[_common()], help="create the CA, server and operator certificates"
    )
    init.add_argument(
        "--san",
        action="append",
        default=[],
        help="a DNS name or IP address agents use to reach the server "
        "(repeatable; default: localhost, 127.0.0.1 and this host's name)",
    )
    init.add_argument(
        "--listen",
        default="0.0.0.0:8443",
        help="agent and operator address, mutual TLS (default: %(default)s)",
    )
    init.add_argument(
        "--enroll-listen",
        default="0.0.0.0:8444",
        help="enrollment address, server TLS only (default: %(default)s)",
    )
    init.add_argument("--advertise", help="host agents connect to (default: the first --san)")
    init.add_argument(
        "--store-url",
        default="",
        help="SQLAlchemy URL of the store (default: SQLite in the data dir); "
        "only SQLite (sqlite:///PATH) is supported yet",
    )
    init.set_defaults(func=_init)

    run = sub.add_parser("run", parents=[_common()], help="run the server until SIGTERM or SIGINT")
    run.add_argument("--listen", help="override server.toml's listen")
    run.add_argument("--enroll-listen", help="override server.toml's enroll_listen")
    run.set_defaults(func=_run)

    migrate = sub.add_parser(
        "migrate",
        parents=[_common()],
        help="upgrade the store to this version's schema (run also does it at start)",
        description="Check the store and upgrade its schema to this version's. "
        "A store of Plumb 0.1.0 is recognised and upgraded; a store written by a "
        "newer Plumb is refused (never downgraded).",
    )
    migrate.add_argument(
        "--json",
        action="store_true",
        help='print {"store", "from", "to", "migrated"}; "from" is null for a 0.1.0 store',
    )
    migrate.set_defaults(func=_migrate)
    return parser


def _init(args: argparse.Namespace) -> int:
    data: Path = args.data_dir
    pki = PKI(data / "pki")
    if pki.exists():
        raise PlumbServerError(f"{data} is already initialised (found {pki.path('ca.crt')})")
    sans = args.san or ["localhost", "127.0.0.1", socket.gethostname()]
    config = ServerConfig(
        data_dir=data,
        listen=args.listen,
        enroll_listen=args.enroll_listen,
        advertise=args.advertise or sans[0],
        store_url=args.store_url,
    )
    store_.check_new(config.store)  # refused before anything is written
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data, 0o700)
    pki.create(sans)
    store_.Store.create(config.store).close()
    config.save()
    cli_config = _write_operator(config, pki)
    print(
        f"initialised {data}\n  operator CLI config: {cli_config}\n"
        f"  use it with: export PLUMB_CONFIG={cli_config}"
    )
    return 0


def _write_operator(config: ServerConfig, pki: PKI) -> Path:
    """The operator's key, certificate and CLI config, under <data>/operator."""
    directory = config.data_dir / "operator"
    operator = issue_keypair(pki.load("ca"), "operator", ROLE_OPERATOR)
    write_private(directory / "operator.key", key_pem(operator.key))
    write_private(directory / "operator.crt", cert_pem(operator.cert))
    write_private(directory / "ca.crt", pki.path("ca.crt").read_bytes())
    port = config.listen.rsplit(":", 1)[1]
    settings = {
        "server": f"{config.advertise}:{port}",
        "ca": str(directory / "ca.crt"),
        "cert": str(directory / "operator.crt"),
        "key": str(directory / "operator.key"),
    }
    path = directory / "cli.toml"
    write_private(path, "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()).encode())
    return path


def _migrate(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.data_dir)
    done = store_.migrate(config.store)
    if args.json:
        print(
            json.dumps(
                {
                    "store": done.store,
                    "from": done.from_revision,
                    "to": done.to_revision,
                    "migrated": done.changed,
                }
            )
        )
    else:
        print(f"plumb-server: {done}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from server.app import serve  # grpc loads only for `run`

    config = ServerConfig.load(args.data_dir)
    config.listen = args.listen or config.listen
    config.enroll_listen = args.enroll_listen or config.enroll_listen

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(run())
    return 0


def run() -> NoReturn:
    """The command as a program (the packages' launchers and the console script call it)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
