"""Through a broker: Mosquitto's ACL keeps clusters apart, bad events are refused clearly,
and a broker restarted in the middle of churn loses nothing (no fleetsync process restarts)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import aiomqtt
import nats
import pytest

from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport import cloudevents
from fleetsync.transport import mqtt as fs_mqtt
from fleetsync.transport import nats as fs_nats
from fleetsync.transport.base import AgentConnection, HubAddress, parse_hub_url
from fleetsync.transport.broker_agent import BrokerConnection
from fleetsync.transport.connect import open_agent_connection
from tests.harness import (
    Hub,
    Sim,
    Transport,
    create_token,
    eventually,
    free_port,
    http,
    hub_events,
    metric,
    run_sim,
    spawn,
    start_agent,
    start_broker,
    start_hub,
    wait_converged,
    wait_until,
)

FAST = ("--types", "v1/Service,v1/Pod")
brokers_only = pytest.mark.parametrize("transport", ["mqtt", "nats"], indirect=True)


async def publish_raw(address: HubAddress, cluster: str, attributes: dict[str, str], payload: bytes) -> None:
    """Publish one event on ``cluster``'s up topic/subject, whatever it holds."""
    if address.scheme == "mqtt":
        async with aiomqtt.Client(address.host, address.port, username=address.username, password=address.password, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.publish(fs_mqtt.up_topic(cluster), payload, qos=1, properties=fs_mqtt.properties(attributes))
    else:
        nc = await nats.connect(f"nats://{address.host}:{address.port}")
        try:
            await nc.jetstream().publish(fs_nats.up_subject(cluster), payload, headers=fs_nats.headers(attributes))
        finally:
            await nc.close()


async def answer(connection: AgentConnection) -> pb.HubMessage:
    """The hub's next message, past gate snapshots (which every session gets; not what these tests look at)."""
    while True:
        message = await asyncio.wait_for(connection.receive(), 15)
        assert message is not None
        if message.WhichOneof("message") != "spec_update":
            return message


def hello(cluster: str, token: str, agent: str = "raw") -> pb.AgentMessage:
    return pb.AgentMessage(hello=pb.Hello(cluster_id=cluster, agent_id=agent, incarnation="raw-1", token=token, protocol_version=1))


# ---- bad input ----------------------------------------------------------------------------------


@brokers_only
def test_bad_events_on_a_broker_get_clear_errors_and_nothing_else_is_lost(sim: Sim, tmp_path: Path, transport: Transport) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, "--max-message-bytes", "65536", transport=transport)
    tokens = {c: create_token(tmp_path, db, c) for c in ("c1", "c2", "c3")}
    agents = [start_agent(tmp_path, sim, c, hub.agent_url, tokens[c], *FAST) for c in ("c2", "c3")]
    address = parse_hub_url(hub.agent_url)
    c1_token, c2_token = tokens["c1"].read_text().strip(), tokens["c2"].read_text().strip()

    async def probe() -> None:
        connection = await open_agent_connection(address, cluster_id="c1", agent_id="raw", max_message_bytes=1 << 20)
        try:
            # a valid token for c2, sent on c1's topic: refused (the topic is what the broker's ACL ties to the sender)
            await connection.send(hello("c2", c2_token))
            refused = await answer(connection)
            assert refused.reject.reason == pb.PERMISSION_DENIED and "arrived on cluster 'c1'" in refused.reject.message, refused
        finally:
            await connection.close()
        connection = await open_agent_connection(address, cluster_id="c1", agent_id="raw", max_message_bytes=1 << 20)
        try:
            # bytes that are no protocol message, on a session of their own
            await publish_raw(
                address, "c1", cloudevents.agent_attributes(hello("c1", c1_token), cluster="c1", session=connection_session(connection)), b"\xff\x00garbage"
            )
            refused = await answer(connection)
            assert refused.reject.reason == pb.PROTOCOL and "not a valid AgentMessage" in refused.reject.message, refused
        finally:
            await connection.close()
        connection = await open_agent_connection(address, cluster_id="c1", agent_id="raw", max_message_bytes=1 << 20)
        try:
            # a proper Hello, then a message over the hub's limit
            await connection.send(hello("c1", c1_token))
            assert (await answer(connection)).WhichOneof("message") == "welcome"
            big = pb.Bundle(type="v1/ConfigMap", incarnation="raw-1", seq=1, kind=pb.FULL, last=True)
            big.upserts.add(namespace="default", name="huge", body=b"x" * 70_000)
            await connection.send(pb.AgentMessage(bundle=big))
            refused = await answer(connection)
            assert refused.reject.reason == pb.PROTOCOL and "exceeds the hub's max message size of 65536" in refused.reject.message, refused
        finally:
            await connection.close()
        # events that are not fleetsync's at all are dropped and counted
        await publish_raw(address, "c1", {"specversion": "1.0", "type": "com.example.other"}, b"{}")
        await eventually(lambda: asyncio.to_thread(metric, f"{hub.url}/metrics", "fleetsync_messages_refused_total", reason="malformed"), timeout=15)

    try:
        asyncio.run(probe())
        wait_converged(sim, hub, "c2", "c3", types="v1/Service,v1/Pod", timeout=60, what="the real agents unaffected")
    finally:
        for agent in agents:
            agent.stop()
        hub.proc.stop()


def connection_session(connection: AgentConnection) -> str:
    assert isinstance(connection, BrokerConnection)
    return connection.session


# ---- ACL ----------------------------------------------------------------------------------------------


def mosquitto_with_acl(tmp: Path, users: dict[str, str]) -> Transport:
    """A Mosquitto that knows ``users`` (name -> password): ``hub`` may use every fleetsync topic,
    every other user only its own cluster's (publish up, read down)."""
    data = tmp / "acl"
    data.mkdir()
    passwd = data / "passwd"
    passwd.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True)
    acl = data / "acl"
    acl.write_text(f"user hub\ntopic readwrite {fs_mqtt.PREFIX}/#\n\npattern write {fs_mqtt.PREFIX}/%u/up\npattern read {fs_mqtt.PREFIX}/%u/down\n")
    acl.chmod(0o600)
    broker = start_broker(tmp, "mqtt", mosquitto_extra=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n")
    return Transport("mqtt", broker)


def test_mosquitto_acl_lets_each_clusters_credentials_publish_only_to_its_own_topics(sim: Sim, tmp_path: Path) -> None:
    transport = mosquitto_with_acl(tmp_path, {"hub": "hub-secret", "c1": "c1-secret", "c2": "c2-secret"})
    assert transport.broker is not None
    port = transport.broker.port
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, transport=Transport("mqtt", transport.broker, hub_url=f"mqtt://hub:hub-secret@127.0.0.1:{port}"))
    tokens = {c: create_token(tmp_path, db, c) for c in ("c1", "c2")}
    agent = start_agent(tmp_path, sim, "c1", f"mqtt://c1:c1-secret@127.0.0.1:{port}", tokens["c1"], *FAST)
    wrong = start_agent(tmp_path, sim, "c2", f"mqtt://c2:not-the-password@127.0.0.1:{port}", tokens["c2"], *FAST)
    c1 = HubAddress("mqtt", "127.0.0.1", port, "c1", "c1-secret")
    try:
        wait_converged(sim, hub, "c1", types="v1/Service,v1/Pod", timeout=60, what="c1 synced with its own credentials")
        wait_until(lambda: "cannot connect to the MQTT broker mqtt://c2@" in wrong.output(), timeout=30, what="a wrong password refused")
        assert any(words in wrong.output().lower() for words in ("not authori", "user name or password")), wrong.output()[-2000:]
        assert "not-the-password" not in wrong.output(), "the password must never be logged"

        async def intrude() -> None:
            # c1's credentials with c2's (valid) hub token, published on c2's topic: the broker drops it
            await publish_raw(
                c1,
                "c2",
                cloudevents.agent_attributes(hello("c2", tokens["c2"].read_text().strip()), cluster="c2", session="intruder"),
                codec.encode(hello("c2", tokens["c2"].read_text().strip())),
            )
            # then something c1 may publish, on its own topic: once the hub has seen it, it has seen everything before it
            await publish_raw(
                c1,
                "c1",
                cloudevents.agent_attributes(hello("c1", "bad-token"), cluster="c1", session="sentinel"),
                codec.encode(hello("c1", "bad-token", agent="sentinel")),
            )

        asyncio.run(intrude())
        wait_until(
            lambda: any("sentinel" in e["message"] or "UNAUTHENTICATED" in e["message"] for e in hub_events(hub, cluster="c1", reason="Rejected")),
            timeout=30,
            what="the sentinel",
        )
        assert not hub_events(hub, cluster="c2"), "c2 was reached with c1's broker credentials"
    finally:
        agent.stop()
        wrong.stop()
        hub.proc.stop()
        transport.broker.stop()


# ---- broker restarts -------------------------------------------------------------------------------------


@brokers_only
def test_broker_restarted_in_the_middle_of_churn_loses_nothing(tmp_path: Path, transport: Transport) -> None:
    broker = transport.broker
    assert broker is not None
    with run_sim(tmp_path, "--clusters", "3", "--pods", "120", "--churn", "0") as sim:
        db = f"sqlite:///{tmp_path / 'hub.db'}"
        hub: Hub = start_hub(tmp_path, db, transport=transport)
        agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, db, c), *FAST) for c in ("c1", "c2", "c3")]
        try:
            wait_converged(sim, hub, types="v1/Service,v1/Pod", timeout=60, what="initial sync")
            sim.set_churn(10)
            for _ in range(2):  # twice: the second restart finds every client on its reconnected session
                wait_until(lambda: len(hub_events(hub, reason="Connected")) >= 3, timeout=30, what="agents connected")
                broker.stop()
                time.sleep(2)  # the broker stays down for a moment, churn going on
                broker.start()
                time.sleep(3)
            sim.set_churn(0)
            wait_converged(sim, hub, types="v1/Service,v1/Pod", timeout=90, what="convergence after the broker restarts")
            for proc in (hub.proc, *agents):
                assert proc.process.poll() is None, "no fleetsync process needed a restart"
        finally:
            for agent in agents:
                agent.stop()
            hub.proc.stop()


# ---- TLS and credentials ---------------------------------------------------------------------------------


def self_signed_certificate(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    cert, key = tmp / "broker.crt", tmp / "broker.key"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run([*request, "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_mqtts_verifies_the_brokers_certificate(sim: Sim, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    broker = start_broker(tmp_path, "mqtt", mosquitto_extra=f"allow_anonymous true\ncertfile {cert}\nkeyfile {key}\n")
    url = f"mqtts://127.0.0.1:{broker.port}"
    trust = {"SSL_CERT_FILE": str(cert)}  # the broker's CA; without it only the system's CAs are trusted
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, transport=Transport("mqtt", broker, hub_url=url), env=trust)
    tokens = {c: create_token(tmp_path, db, c) for c in ("c1", "c2")}
    trusting = start_agent(tmp_path, sim, "c1", url, tokens["c1"], *FAST, env=trust)
    doubting = start_agent(tmp_path, sim, "c2", url, tokens["c2"], *FAST)
    try:
        wait_converged(sim, hub, "c1", types="v1/Service,v1/Pod", timeout=60, what="c1 synced over TLS")
        wait_until(lambda: "certificate verify failed" in doubting.output(), timeout=30, what="an untrusted broker refused")
        assert not hub_events(hub, cluster="c2")
    finally:
        trusting.stop()
        doubting.stop()
        hub.proc.stop()
        broker.stop()


def test_nats_with_credentials(sim: Sim, tmp_path: Path) -> None:
    broker = start_broker(tmp_path, "nats", nats_args=("--user", "fleet", "--pass", "s3cret"))
    port = broker.port
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, transport=Transport("nats", broker, hub_url=f"nats://fleet:s3cret@127.0.0.1:{port}"))
    tokens = {c: create_token(tmp_path, db, c) for c in ("c1", "c2")}
    agent = start_agent(tmp_path, sim, "c1", f"nats://fleet:s3cret@127.0.0.1:{port}", tokens["c1"], *FAST)
    wrong = start_agent(tmp_path, sim, "c2", f"nats://fleet:guess@127.0.0.1:{port}", tokens["c2"], *FAST)
    try:
        wait_converged(sim, hub, "c1", types="v1/Service,v1/Pod", timeout=60, what="c1 synced with credentials")
        wait_until(lambda: "cannot connect to NATS nats://fleet@127.0.0.1" in wrong.output(), timeout=30, what="a wrong password refused")
        assert "authorization" in wrong.output().lower(), wrong.output()[-2000:]
        assert "guess" not in wrong.output() and "s3cret" not in agent.output() + hub.proc.output(), "passwords are never logged"
    finally:
        agent.stop()
        wrong.stop()
        hub.proc.stop()
        broker.stop()


@brokers_only
def test_the_hub_is_ready_once_it_serves_its_broker(tmp_path: Path, transport: Transport) -> None:
    broker = transport.broker
    assert broker is not None
    broker.stop()
    http_port = free_port()
    readyz = f"http://127.0.0.1:{http_port}/readyz"
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = spawn(tmp_path, "hub", "hub", "--db", db, "--grpc", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{http_port}", "--broker", broker.url)
    try:
        # the API answers, but the hub says what it still waits for
        def unready_with_reason() -> tuple[int, str] | None:
            status, text = http("GET", readyz, timeout=2)
            return (status, str(text)) if "cannot" in str(text) else None

        status, text = wait_until(unready_with_reason, timeout=30, what="a reason")
        assert status == 503 and broker.url in text, text
        broker.start()
        wait_until(lambda: http("GET", readyz, timeout=2)[0] == 200, timeout=30, what="ready once the broker is served")
    finally:
        hub.stop()
