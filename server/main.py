"""``plumb-server``: set up a server's data directory, migrate its store, run it, and
manage operators on the server host (the break-glass way in: no certificate needed)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from protos import plumb_pb2 as pb
from server import audit, cliviews, operators, wire
from server import ca as ca_
from server import store as store_
from server.config import ServerConfig
from server.errors import OperatorExists, PlumbServerError
from server.operators import Role
from server.pki import PKI, ROLE_OPERATOR, cert_pem, fingerprint, issue_keypair, key_pem

DEFAULT_DATA_DIR = Path(os.environ.get("PLUMB_DATA_DIR", "/var/lib/plumb-server"))

EPILOG = """\
exit codes: 0 success (for migrate: migrated, or already at head), 1 error (the
message says why; a store that is refused or fails to migrate is left as it
was), 2 bad usage.

examples:
  plumb-server init --data-dir /var/lib/plumb-server --san plumb.example.com
  plumb-server run --data-dir /var/lib/plumb-server
  plumb-server migrate --data-dir /var/lib/plumb-server --json
  plumb-server operator add alice --role operator --out /root/alice-plumb
  plumb-server operator list --all
  plumb-server operator revoke alice
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
        "--admin",
        type=_operator_name,
        default="admin",
        metavar="NAME",
        help="the name of the first operator, an admin, whose CLI config init writes under "
        "<data-dir>/operator (default: %(default)s)",
    )
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
    _operator_parser(sub)
    _ca_parser(sub)
    return parser


def _ca_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser(
        "ca",
        help="the CA: its status, and rolling it over to a new one (begin, switch, finish)",
        description="Roll the CA over in three steps, each with the server stopped and "
        "followed by a restart: 'begin' makes the next CA, trusted beside the current one "
        "(agents learn both at their next session); 'switch' makes it the issuing CA (nodes "
        "renew from it at once; operators run 'plumb operator renew'); 'finish' stops "
        "trusting the old one once no node holds a certificate from it.",
    ).add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    status = ca.add_parser(
        "status", parents=[_common()], help="the trusted CAs and how many nodes each issued"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_ca_status)
    for name, help_text in (
        ("begin", "make the next CA, trusted beside the current one"),
        ("switch", "make the next CA the issuing one; the old one stays trusted"),
    ):
        step = ca.add_parser(name, parents=[_common()], help=help_text)
        step.set_defaults(func=_ca_step)
    finish = ca.add_parser(
        "finish", parents=[_common()], help="stop trusting the old CA (no node may still need it)"
    )
    finish.add_argument(
        "--force",
        action="store_true",
        help="finish even though nodes still hold certificates of the old CA (they must "
        "then re-enroll)",
    )
    finish.set_defaults(func=_ca_step)


def _ca_census(
    trust: ca_.Trust, nodes: list[store_.NodeRow]
) -> tuple[dict[str, list[str]], list[str]]:
    """The nodes each trusted CA issued the certificate of (by CA role), and the unrecorded."""
    roles = {ca_.key_id(trust.issuing): "issuing"}
    if trust.next is not None:
        roles[ca_.key_id(trust.next)] = "next"
    if trust.previous is not None:
        roles[ca_.key_id(trust.previous)] = "previous"
    by_role: dict[str, list[str]] = {role: [] for role in roles.values()}
    unknown = []
    for node in nodes:
        role = roles.get(node.cert_issuer or "")
        if role is None:
            unknown.append(node.name)
        else:
            by_role[role].append(node.name)
    return by_role, unknown


def _ca_status(args: argparse.Namespace) -> int:
    config, store = _local_store(args)
    try:
        nodes = store.list_nodes()
    finally:
        store.close()
    trust = ca_.trust(PKI(config.data_dir / "pki"))
    by_role, unknown = _ca_census(trust, nodes)
    cas = {"issuing": trust.issuing, "next": trust.next, "previous": trust.previous}
    listed: dict[str, dict[str, Any]] = {
        role: {
            "key_id": ca_.key_id(cert),
            "fingerprint": fingerprint(cert),
            "not_after": cert.not_valid_after_utc.timestamp(),
            "nodes": by_role.get(role, []),
        }
        for role, cert in cas.items()
        if cert is not None
    }
    if args.json:
        view = {"phase": trust.phase, "cas": listed, "nodes_not_recorded": unknown}
        print(json.dumps(view, indent=2, sort_keys=True))
        return 0
    print(f"rollover: {trust.phase}")
    for role, info in listed.items():
        print(
            f"  {role:<8} key id {info['key_id'][:16]}..., until "
            f"{datetime.datetime.fromtimestamp(info['not_after'], datetime.UTC):%Y-%m-%d}: "
            f"{len(info['nodes'])} node(s)"
        )
    if unknown:
        print(f"  issuer not recorded yet (until their next session): {', '.join(unknown)}")
    return 0


def _ca_step(args: argparse.Namespace) -> int:
    from server.app import lock_data_dir  # the server must not run meanwhile

    config, store = _local_store(args)
    pki = PKI(config.data_dir / "pki")
    try:
        with lock_data_dir(config.data_dir):
            if args.ca_command == "begin":
                cert = ca_.begin(pki)
                done = (
                    f"next CA made (key id {ca_.key_id(cert)[:16]}...): restart the server; "
                    "once every node has connected, 'plumb-server ca switch'"
                )
            elif args.ca_command == "switch":
                cert = ca_.switch(pki)
                done = (
                    f"the new CA (key id {ca_.key_id(cert)[:16]}...) issues from now on; "
                    "restart the server: nodes renew at their next session, operators run "
                    "'plumb operator renew'; then 'plumb-server ca finish'"
                )
            else:
                _check_no_node_needs_the_previous_ca(store, ca_.trust(pki), args.force)
                ca_.finish(pki)
                done = "the old CA is no longer trusted: restart the server"
            action = f"CA{args.ca_command.capitalize()}"
            store.audit(audit.Entry(audit.Actor.local(), audit.LOCAL, action, {}), time.time())
    finally:
        store.close()
    print(done)
    return 0


def _check_no_node_needs_the_previous_ca(
    store: store_.Store, trust: ca_.Trust, force: bool
) -> None:
    by_role, unknown = _ca_census(trust, store.list_nodes())
    stuck = by_role.get("previous", []) + unknown
    if stuck and not force:
        raise PlumbServerError(
            f"node(s) {', '.join(stuck)} may still hold a certificate of the old CA (they "
            "renew at their next session): wait for them, remove them, or --force (they "
            "must then re-enroll)"
        )


def _operator_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``plumb-server operator ACTION``: operators, changed in the store on this host."""
    operator = sub.add_parser(
        "operator",
        help="operators on this host: add (a certificate and CLI config), list, revoke",
        description="Manage operators directly in the store, on the server host (no "
        "certificate needed: the way back in when no admin's works). Admins do the same "
        "from anywhere with 'plumb operator'. A running server sees a change within a second.",
    ).add_subparsers(required=True, metavar="ACTION")
    add = operator.add_parser(
        "add",
        parents=[_common()],
        help="a new operator: its key, certificate and a portable CLI config in --out",
        description="Make a key and a certificate for operator NAME with ROLE and write them, "
        "with the CA certificate and a cli.toml naming them (relative paths: the directory "
        "works wherever it is copied), into --out (0700, files 0600). The key is written "
        "there only, never into the data dir: give the directory to the operator.",
    )
    add.add_argument("name", metavar="NAME", help=operators.NAME_RULE)
    add.add_argument(
        "--role",
        required=True,
        choices=[role.value for role in Role],
        help="viewer reads; operator also pushes; admin also manages tokens, nodes and operators",
    )
    add.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="a new (or empty) directory outside the data dir (default: ./plumb-operator-NAME)",
    )
    add.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="the address the config names (default: server.toml's advertise and listen port)",
    )
    add.set_defaults(func=_operator_add)
    listing = operator.add_parser("list", parents=[_common()], help="operators and their roles")
    listing.add_argument("--all", action="store_true", help="also the revoked ones")
    listing.add_argument(
        "--json", action="store_true", help='print {"operators": [...]} (server/cliviews.py)'
    )
    listing.set_defaults(func=_operator_list)
    revoke = operator.add_parser(
        "revoke",
        parents=[_common()],
        help="revoke an operator: its calls are refused (a running server: within a second)",
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument(
        "--json",
        action="store_true",
        help='print {"operator": ..., "already_revoked": ...} (server/cliviews.py)',
    )
    revoke.set_defaults(func=_operator_revoke)


def _operator_name(text: str) -> str:
    if not operators.valid_name(text):
        raise argparse.ArgumentTypeError(f"invalid operator name {text!r}: {operators.NAME_RULE}")
    return text


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
    store = store_.Store.create(config.store)
    try:
        config.save()
        cli_config = _add_operator(
            config, store, args.admin, Role.ADMIN, data / "operator", _address(config)
        )
    finally:
        store.close()
    print(
        f"initialised {data}\n  admin operator {args.admin!r}, CLI config: {cli_config}\n"
        f"  use it with: export PLUMB_CONFIG={cli_config}\n"
        "  (it holds the admin's key: copy the directory to the admin's machine, or add "
        "named operators with 'plumb-server operator add' and revoke this one)"
    )
    return 0


def _address(config: ServerConfig) -> str:
    """Where operators reach the server: the advertised host, the listen port."""
    return f"{config.advertise}:{config.listen.rsplit(':', 1)[1]}"


def _add_operator(
    config: ServerConfig,
    store: store_.Store,
    name: str,
    role: Role,
    out: Path,
    server: str,
) -> Path:
    """A key and certificate for operator ``name``, its CLI config in ``out``, its store row
    and audit entry; the config's path. ``out`` must be new or empty (it is removed again
    if the store refuses the name)."""
    existing = store.operator(name)
    if existing is not None and existing.revoked_at is None:
        raise OperatorExists(
            f"an operator named {name!r} exists ({existing.role}): revoke it first "
            "('plumb-server operator revoke'), or choose another name"
        )
    operators.check_out_dir(out)
    pki = PKI(config.data_dir / "pki")
    pair = issue_keypair(pki.load("ca"), name, ROLE_OPERATOR, config.operator_cert_ttl_s)
    serial = format(pair.cert.serial_number, "x")
    made = not out.exists()
    path = operators.write_config(
        out, server, key_pem(pair.key), cert_pem(pair.cert), ca_.trust(pki).bundle
    )
    now = time.time()
    try:
        store.add_operator(name, role, serial, now)
    except OperatorExists:
        if made:
            shutil.rmtree(out)
        else:
            for leftover in out.iterdir():
                leftover.unlink()
        raise
    details = {"operator": name, "role": role.value, "cert_serial": serial}
    store.audit(audit.Entry(audit.Actor.local(), audit.LOCAL, "AddOperator", details), now)
    return path


def _local_store(args: argparse.Namespace) -> tuple[ServerConfig, store_.Store]:
    config = ServerConfig.load(args.data_dir)
    return config, store_.Store(config.store)


def _operator_add(args: argparse.Namespace) -> int:
    if not operators.valid_name(args.name):
        raise PlumbServerError(f"invalid operator name {args.name!r}: {operators.NAME_RULE}")
    out: Path = args.out or Path(f"plumb-operator-{args.name}")
    config, store = _local_store(args)
    try:
        operators.check_out_dir(out, config.data_dir)
        path = _add_operator(
            config, store, args.name, Role(args.role), out, args.server or _address(config)
        )
    finally:
        store.close()
    print(
        f"operator {args.name!r} ({args.role}) added: its CLI config is {path}\n"
        f"  {out} holds its key: give the directory to {args.name} (keep it private), who "
        f"uses it with: export PLUMB_CONFIG=<where it is>/{operators.CONFIG}"
    )
    return 0


def _operator_list(args: argparse.Namespace) -> int:
    _, store = _local_store(args)
    try:
        rows = store.list_operators(revoked=args.all)
    finally:
        store.close()
    infos = [wire.operator_info(r) for r in rows]
    if args.json:
        print(
            json.dumps(
                cliviews.operators(pb.ListOperatorsResponse(operators=infos)),
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    for line in cliviews.operator_table(infos):
        print(line)
    return 0


def _operator_revoke(args: argparse.Namespace) -> int:
    _, store = _local_store(args)
    try:
        row, revoked_now = store.revoke_operator(args.name, time.time())
        if revoked_now:
            details = {"operator": row.name, "role": row.role, "cert_serial": row.cert_serial}
            entry = audit.Entry(audit.Actor.local(), audit.LOCAL, "RevokeOperator", details)
            store.audit(entry, time.time())
    finally:
        store.close()
    reply = pb.RevokeOperatorResponse(
        operator=wire.operator_info(row), already_revoked=not revoked_now
    )
    if args.json:
        print(json.dumps(cliviews.operator_revoked(reply), indent=2, sort_keys=True))
    elif revoked_now:
        print(
            f"revoked operator {row.name!r} ({row.role}): its calls are refused, by a running "
            "server within a second"
        )
    else:
        print(f"operator {row.name!r} was already revoked: nothing changed")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.data_dir)
    done = store_.migrate(config.store)
    store = store_.Store(config.store)
    try:
        adopted = operators.adopt_bootstrap_operator(store, config.data_dir, time.time())
    finally:
        store.close()
    if adopted:
        print(f"plumb-server: {adopted}", file=sys.stderr)
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
