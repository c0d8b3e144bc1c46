"""Upgrading the package and restarting is enough: `plumb-server run` migrates the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from server import migrations
from server.pki import PKI, ROLE_OPERATOR, cert_pem, issue_keypair, key_pem
from tests.integration.harness import Agent, Server, wait_for
from tests.server.data import load_store_0_1_0


def like_0_1_0(server: Server) -> None:
    """The operator dir as Plumb 0.1.0's init wrote it: one certificate, CN=operator."""
    directory = server.data_dir / "operator"
    pair = issue_keypair(PKI(server.data_dir / "pki").load("ca"), "operator", ROLE_OPERATOR)
    (directory / "operator.key").write_bytes(key_pem(pair.key))
    (directory / "operator.crt").write_bytes(cert_pem(pair.cert))
    (directory / "cli.toml").write_text(
        f'server = "localhost:0"\nca = "{directory}/ca.crt"\n'
        f'cert = "{directory}/operator.crt"\nkey = "{directory}/operator.key"\n'
    )


def test_run_migrates_a_0_1_0_store_at_start_and_serves_what_it_held(
    tmp_path: Path, make_agent: Callable[[str], Agent]
) -> None:
    server = Server(tmp_path / "server")
    store = load_store_0_1_0(server.data_dir / "plumb.db")  # the data dir of a 0.1.0 server
    like_0_1_0(server)
    server.start()
    try:
        migrated = (
            "plumb-server: store migrated from 0.1.0 (no revision recorded) "
            f"to {migrations.head()}: {store}"
        )
        # Its one operator certificate is now an admin: nobody is locked out.
        adopted = (
            f"plumb-server: the operator certificate of {server.data_dir}/operator/operator.crt "
            "(from before operators had roles) is now admin operator 'operator': add named "
            "operators ('plumb-server operator add'), then revoke it ('plumb operator revoke "
            "operator')"
        )
        assert server.logs().splitlines() == [migrated, adopted]
        (operator,) = server.cli_json("operator", "list")["operators"]
        assert (operator["name"], operator["role"]) == ("operator", "admin")
        (entry,) = server.cli_json("audit")["entries"]
        assert (entry["actor_kind"], entry["action"], entry["details"]["adopted"]) == (
            "server",
            "AddOperator",
            f"{server.data_dir}/operator/operator.crt",
        )
        nodes = server.nodes()
        assert {name: node["labels"] for name, node in nodes.items()} == {
            "db-1": {"role": "db"},
            "web-1": {"role": "web"},
            "web-2": {"role": "web"},
        }
        assert nodes["web-1"]["applied_revision"] == 2
        events = server.cli_json("drift")["events"]
        assert sorted(e["report_id"] for e in events) == ["db-1-0001", "web-1-0002", "web-2-0001"]
        assert server.cli_json("report", "web-1")["id"] == "web-1-0002"

        # The migrated store takes new nodes, and says nothing more at the next start.
        agent = make_agent("web-3")
        result = agent.enroll(server, server.token({"role": "web"}))
        assert result.returncode == 0, result.stderr
        server.stop()
        server.start()
        assert server.logs().splitlines() == [migrated, adopted]  # nothing more
        wait_for(lambda: "web-3" in server.nodes(), what="web-3 in the migrated store")
    finally:
        server.stop()
