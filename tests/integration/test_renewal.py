"""Certificates renew themselves: nodes over their session, operators with plumb, the signer.

A real server and real agents over mutual TLS on loopback; lifetimes made
short in server.toml, or clocks moved with libfaketime, so that months pass
in seconds. The finding this answers (issue 11): node, operator and
catalog-signer certificates lived 365 days with no renewal, so day 366 was a
fleet-wide outage.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from server.ca import issuer_id, key_id
from server.pki import PKI, ROLE_SIGNER, issue_keypair
from tests.integration.conftest import write
from tests.integration.harness import Agent, Server, command, skewed, wait_for
from tests.integration.test_revocation import channel, refused, serial_of

DAY_S = 86400

MOTD = """\
name: motd
target: {all: true}
resources:
  - {kind: file, name: motd, spec: {path: /motd, content: "managed\\n"}}
"""


def configure(server: Server, **settings: int) -> None:
    """Restart ``server`` with ``settings`` in its server.toml."""
    server.stop()
    toml = server.data_dir / "server.toml"
    kept = [ln for ln in toml.read_text().splitlines() if ln.partition(" =")[0] not in settings]
    toml.write_text(
        "".join(f"{ln}\n" for ln in [*kept, *(f"{k} = {v}" for k, v in settings.items())])
    )
    server.start()


def node(server: Server, name: str, clock: str | None = None) -> dict[str, Any]:
    """``plumb nodes --json``'s entry for ``name`` (the CLI's clock moved by ``clock``)."""
    listed = operator_cli(server, "nodes", "--json", clock=clock)
    assert listed.returncode == 0, listed.stderr
    nodes: dict[str, Any] = {n["name"]: n for n in json.loads(listed.stdout)["nodes"]}
    return nodes[name]


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def audit_actions(server: Server, actor: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = server.cli_json("audit")["entries"]
    return [e for e in entries if e["actor"] == actor]


def converged(agent: Agent) -> None:
    motd = agent.path("/motd")
    wait_for(lambda: motd.exists() and motd.read_text() == "managed\n", 20, "motd converged")


def moved_on(server: Server, clock: str) -> None:
    """Restart ``server`` with its clock moved on by ``clock``: time passed for everyone."""
    server.stop()
    server.start(clock=clock)


def test_an_online_agent_renews_in_time_and_keeps_its_server_past_the_first_expiry(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    # 30 s certificates, renewed in their last 10 s.
    configure(server, node_cert_ttl_s=30)
    agent = enrolled("web-1")
    state = agent.state_dir
    first = certificate(state / "node.crt")
    first_key, first_cert = (state / "node.key").read_bytes(), (state / "node.crt").read_bytes()
    first_serial = serial_of(agent)
    assert node(server, "web-1")["cert_not_after"] == first.not_valid_after_utc.timestamp()
    agent.start()

    renewed = wait_for(lambda: serial_of(agent) != first_serial and serial_of(agent), 40, "renewal")
    # A new key too, and the server's record follows once a session opens with it.
    assert (state / "node.key").read_bytes() != first_key
    assert not (state / "node.next.key").exists() and not (state / "node.next.crt").exists()
    wait_for(
        lambda: node(server, "web-1")["cert_serial"] == renewed and node(server, "web-1"),
        20,
        "the server using the renewed certificate",
    )
    # The old certificate, not expired yet, is refused from then on.
    assert time.time() < first.not_valid_after_utc.timestamp()
    code, details = refused(channel(server, first_key, first_cert))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"certificate serial {first_serial} is not node web-1's current one" in details

    # Past the first certificate's expiry the node is still served: a push reaches it.
    wait_for(lambda: time.time() > first.not_valid_after_utc.timestamp() + 1, 40, "first expiry")
    result = server.push(write(tmp_path / "motd.yaml", MOTD))
    assert result.returncode == 0, result.stderr
    converged(agent)

    # Each renewal is in the audit log, as the node, and so is the retired certificate.
    actions = audit_actions(server, "web-1")
    renewals = [e for e in actions if e["action"] == "RenewCertificate"]
    assert renewals and all(e["actor_kind"] == "node" and e["result"] == "ok" for e in renewals)
    assert renewals[0]["details"]["replaces_serial"] == first_serial
    assert renewals[0]["details"]["cert_serial"] == renewed
    retired = [e for e in actions if e["action"] == "RetireCertificate"]
    assert retired[0]["details"] == {
        "node": "web-1",
        "cert_serial": renewed,
        "revoked_serial": first_serial,
    }
    assert server.cli_json("audit", "--verify")["intact"] is True


def test_an_agent_back_after_months_away_renews_at_once(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    # A 90-day certificate; the agent comes back 70 days on (libfaketime, on
    # the server too), with 20 days left: in its last third.
    agent = enrolled("web-1")
    first_serial = serial_of(agent)
    assert server.push(write(tmp_path / "motd.yaml", MOTD)).returncode == 0
    moved_on(server, "+70d")
    agent.start(clock="+70d")
    renewed = wait_for(lambda: serial_of(agent) != first_serial and serial_of(agent), 30, "renewal")
    wait_for(lambda: node(server, "web-1")["cert_serial"] == renewed, 20, "the server's record")
    # A fresh 90 days from the server's clock (70 days on), and renewed once only.
    left = node(server, "web-1")["cert_not_after"] - (time.time() + 70 * DAY_S)
    assert 89 * DAY_S < left <= 90 * DAY_S
    converged(agent)
    renewals = [e for e in audit_actions(server, "web-1") if e["action"] == "RenewCertificate"]
    assert len(renewals) == 1, renewals


def test_an_agent_whose_clock_is_months_ahead_does_not_renew_again_and_again(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    # The host's clock alone is 70 days ahead: by the server's clock (the one
    # that refuses an expired certificate) nothing is due.
    agent = enrolled("web-1")
    first_serial = serial_of(agent)
    assert server.push(write(tmp_path / "motd.yaml", MOTD)).returncode == 0
    agent.start(clock="+70d")
    converged(agent)
    wait_for(lambda: node(server, "web-1")["applied_revision"] == 1, 20, "the catalog acked")
    assert serial_of(agent) == first_serial
    assert not [e for e in audit_actions(server, "web-1") if e["action"] == "RenewCertificate"]


def test_a_certificate_that_expired_offline_still_enforces_the_cache_and_says_what_to_do(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    assert server.push(write(tmp_path / "motd.yaml", MOTD)).returncode == 0
    agent.start()
    converged(agent)
    agent.stop()
    # 100 days on: the node's 90-day certificate has expired.
    moved_on(server, "+100d")
    agent.start(clock="+100d")
    log = agent.state_dir.parent / "agent.log"
    wait_for(lambda: "certificate expired at" in log.read_text(), 20, "the note in the agent's log")
    assert "Enroll the node again: an admin runs 'plumb node reenroll web-1'" in log.read_text()
    # Drift is still repaired from the cached catalog, verified when it came.
    motd = agent.path("/motd")
    motd.write_text("changed\n")
    wait_for(lambda: motd.read_text() == "managed\n", 20, "drift repaired without the server")


def test_a_renewal_that_cannot_be_saved_is_loud_and_retried_on_the_next_session(
    server: Server, enrolled: Callable[..., Agent]
) -> None:
    agent = enrolled("web-1")
    first_serial = serial_of(agent)
    # Where the new key is staged, something that takes no file: saving fails.
    planted = agent.state_dir / "node.next.key"
    planted.mkdir()
    moved_on(server, "+70d")
    agent.start(clock="+70d")

    def condition() -> dict[str, Any] | None:
        held = {c["name"]: c for c in node(server, "web-1", clock="+70d")["conditions"]}
        return held.get("certificate_renewal")

    held = wait_for(condition, 30, "the certificate_renewal condition in plumb nodes")
    assert "could not be renewed: cannot save the new certificate" in held["detail"]
    assert "the certificate expires at" in held["detail"]
    assert "certificate renewal failed" in (agent.state_dir.parent / "agent.log").read_text()
    # Nothing was lost: the old certificate is still the node's, and still works.
    assert serial_of(agent) == first_serial
    now = node(server, "web-1", clock="+70d")
    assert now["connected"] and now["cert_serial"] == first_serial

    # The cause gone, the next session renews and the condition clears.
    planted.rmdir()
    agent.stop()
    agent.start(clock="+70d")
    wait_for(lambda: serial_of(agent) != first_serial, 30, "renewal on the next session")
    wait_for(lambda: condition() is None, 20, "the condition cleared")


def operator_cli(
    server: Server, *args: str, clock: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PLUMB_CONFIG": str(server.cli_config),
        "PLUMB_SERVER": server.agent_address,
    }
    return subprocess.run(
        [*skewed(clock), *command("server.cli"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_an_operator_renews_its_own_certificate_and_the_old_one_is_refused(server: Server) -> None:
    operator_dir = server.cli_config.parent
    old_key = (operator_dir / "operator.key").read_bytes()
    old_cert = (operator_dir / "operator.crt").read_bytes()
    old_serial = format(x509.load_pem_x509_certificate(old_cert).serial_number, "x")

    # 70 days on, every command says the certificate is due.
    due = operator_cli(server, "nodes", clock="+70d")
    assert due.returncode == 0, due.stderr
    assert "renew it with 'plumb operator renew'" in due.stderr
    assert "expires in 20.0 days" in due.stderr

    renewed = operator_cli(server, "operator", "renew", "--json")
    assert renewed.returncode == 0, renewed.stderr
    reply = json.loads(renewed.stdout)
    assert reply["replaced_serial"] == old_serial
    new_serial = reply["operator"]["cert_serial"]
    assert new_serial != old_serial
    new_cert = certificate(operator_dir / "operator.crt")
    assert format(new_cert.serial_number, "x") == new_serial
    assert (operator_dir / "operator.key").read_bytes() != old_key
    assert oct((operator_dir / "operator.key").stat().st_mode & 0o777) == "0o600"

    # The renewed config works (and today warns of nothing); the old pair is refused.
    after = operator_cli(server, "nodes")
    assert after.returncode == 0 and after.stderr == "", after.stderr
    assert (
        new_cert.not_valid_after_utc > x509.load_pem_x509_certificate(old_cert).not_valid_after_utc
    )
    stale = server.data_dir / "stale"
    stale.mkdir()
    (stale / "operator.key").write_bytes(old_key)
    (stale / "operator.crt").write_bytes(old_cert)
    (stale / "ca.crt").write_bytes((operator_dir / "ca.crt").read_bytes())
    (stale / "cli.toml").write_text(
        f'server = "{server.agent_address}"\nca = "ca.crt"\ncert = "operator.crt"\n'
        'key = "operator.key"\n'
    )
    old = subprocess.run(
        [*command("server.cli"), "--config", str(stale / "cli.toml"), "nodes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert old.returncode == 1
    assert f"certificate serial {old_serial} is not operator" in old.stderr
    entry = [e for e in server.cli_json("audit")["entries"] if e["action"] == "RenewOperator"]
    assert entry[-1]["details"]["replaced_serial"] == old_serial
    assert entry[-1]["details"]["cert_serial"] == new_serial


def test_the_server_rotates_a_signer_near_its_expiry_and_agents_take_its_catalogs(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = enrolled("web-1")
    pki = PKI(server.data_dir / "pki")
    # A signer in the last third of its life (made 5 minutes back, good for 2 more).
    server.stop()
    pki.save("signer", issue_keypair(pki.load("ca"), "plumb-server", ROLE_SIGNER, 120))
    old = certificate(pki.path("signer.crt"))
    server.start()

    new = certificate(pki.path("signer.crt"))
    assert new.serial_number != old.serial_number
    lifetime = new.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert lifetime > datetime.timedelta(days=364)
    rotation = [e for e in server.cli_json("audit")["entries"] if e["action"] == "RotateSigner"]
    assert rotation[-1]["details"]["replaced_serial"] == format(old.serial_number, "x")
    assert rotation[-1]["actor_kind"] == "server"

    assert server.push(write(tmp_path / "motd.yaml", MOTD)).returncode == 0
    agent.start()
    converged(agent)  # the catalog, signed by the new signer, verified and applied


# ------------------------------------------------------------ rolling the CA over


def motd(content: str) -> str:
    return MOTD.replace("managed", content)


def ca_command(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("server.main"), "--data-dir", str(server.data_dir), "ca", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ca_step(server: Server, step: str) -> None:
    """One step of a rollover, as the README says: the server stopped, then restarted."""
    server.stop()
    done = ca_command(server, step)
    assert done.returncode == 0, done.stderr
    server.start()


def issuer_of(path: Path) -> str:
    return issuer_id(certificate(path))


def trusted(path: Path) -> int:
    return path.read_bytes().count(b"BEGIN CERTIFICATE")


def shows(agent: Agent, content: str) -> bool:
    path = agent.path("/motd")
    return path.exists() and path.read_text() == f"{content}\n"


def test_the_ca_rolls_over_with_an_overlap_and_no_node_is_cut_off(
    server: Server, enrolled: Callable[..., Agent], tmp_path: Path
) -> None:
    web1, web2 = enrolled("web-1"), enrolled("web-2")
    first_key = (web1.state_dir / "node.key").read_bytes()
    first_cert = (web1.state_dir / "node.crt").read_bytes()
    operator_dir = server.cli_config.parent
    assert server.push(write(tmp_path / "motd.yaml", motd("one"))).returncode == 0
    for agent in (web1, web2):
        agent.start()
    wait_for(lambda: shows(web1, "one") and shows(web2, "one"), 20, "both converged")

    # begin: both CAs trusted, by the server and, after their next session, the nodes.
    ca_step(server, "begin")
    for agent in (web1, web2):
        wait_for(lambda a=agent: trusted(a.state_dir / "ca.crt") == 2, 30, "the nodes' new trust")
    assert operator_cli(server, "operator", "renew").returncode == 0
    assert trusted(operator_dir / "ca.crt") == 2

    # switch, with web-2 away: web-1 renews from the new CA at its next session.
    web2.stop()
    ca_step(server, "switch")
    new_ca = certificate(server.data_dir / "pki" / "ca.crt")
    new_id = key_id(new_ca)
    assert issuer_of(server.data_dir / "pki" / "server.crt") == new_id
    assert issuer_of(server.data_dir / "pki" / "signer.crt") == new_id
    wait_for(lambda: issuer_of(web1.state_dir / "node.crt") == new_id, 30, "web-1 renewed")
    # A catalog signed by the new CA's signer is taken.
    assert server.push(write(tmp_path / "motd.yaml", motd("two"))).returncode == 0
    wait_for(lambda: shows(web1, "two"), 20, "web-1 applies a catalog of the new signer")
    # The operator still gets in with its old CA's certificate, and renews from the new one.
    assert operator_cli(server, "operator", "renew").returncode == 0
    assert issuer_of(operator_dir / "operator.crt") == new_id

    # finish is refused while web-2 still holds the old CA's certificate.
    server.stop()
    refused_finish = ca_command(server, "finish")
    assert refused_finish.returncode == 1
    assert "node(s) web-2 may still hold a certificate of the old CA" in refused_finish.stderr
    server.start()
    web2.start()
    wait_for(lambda: issuer_of(web2.state_dir / "node.crt") == new_id, 30, "web-2 renewed")
    # ... and has opened a session with it, which the store records.
    wait_for(lambda: node(server, "web-2")["cert_issuer"] == new_id, 30, "web-2's record")
    wait_for(lambda: shows(web2, "two"), 20, "web-2 caught up")
    ca_step(server, "finish")

    # Only the new CA now: both nodes still served, the old certificate refused at the handshake.
    assert server.push(write(tmp_path / "motd.yaml", motd("three"))).returncode == 0
    wait_for(lambda: shows(web1, "three") and shows(web2, "three"), 30, "both served")
    code, _ = refused(channel(server, first_key, first_cert))
    assert code == grpc.StatusCode.UNAVAILABLE
    for agent in (web1, web2):
        wait_for(lambda a=agent: trusted(a.state_dir / "ca.crt") == 1, 30, "the old CA dropped")

    status = json.loads(ca_command(server, "status", "--json").stdout)
    assert status["phase"] == "none"
    assert status["cas"]["issuing"]["nodes"] == ["web-1", "web-2"]
    steps = [e["action"] for e in server.cli_json("audit")["entries"] if e["actor_kind"] == "local"]
    assert steps[-3:] == ["CABegin", "CASwitch", "CAFinish"]
