"""What a broker carries besides the protocol: CloudEvents attributes, broker URLs, names fit for topics."""

from __future__ import annotations

import pytest

from fleetsync.model.names import check_cluster_name
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport import cloudevents
from fleetsync.transport.base import parse_hub_url
from fleetsync.transport.mqtt import cluster_of as mqtt_cluster
from fleetsync.transport.mqtt import up_topic
from fleetsync.transport.nats import cluster_of as nats_cluster
from fleetsync.transport.nats import up_subject


def test_a_bundle_is_a_cloudevent_other_tools_can_route() -> None:
    bundle = pb.Bundle(type="v1/Pod", incarnation="abc", seq=7, base_seq=6, kind=pb.DELTA)
    attributes = cloudevents.agent_attributes(pb.AgentMessage(bundle=bundle), cluster="eu-1", session="s1")
    assert attributes["specversion"] == "1.0"
    assert attributes["type"] == "io.fleetsync.v1.bundle"
    assert attributes["source"] == "eu-1"
    assert attributes["subject"] == "v1/Pod"
    assert attributes["fsversion"] == "abc.7"
    assert attributes["id"] and attributes["time"].endswith("Z")
    received = cloudevents.parse(attributes)
    assert received.session == "s1" and not received.goodbye


def test_hub_answers_name_the_replica_and_the_stream() -> None:
    ack = pb.HubMessage(ack=pb.Ack(type="v1/Pod", incarnation="abc", seq=7))
    attributes = cloudevents.hub_attributes(ack, hub_id="hub-a", session="s1")
    assert (attributes["type"], attributes["source"], attributes["subject"], attributes["fsversion"]) == ("io.fleetsync.v1.ack", "hub/hub-a", "v1/Pod", "abc.7")


def test_goodbye_ends_a_session() -> None:
    assert cloudevents.parse(cloudevents.agent_attributes(None, cluster="c1", session="s1")).goodbye


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ({"type": "io.fleetsync.v1.hello", "fssession": "s"}, "spec version"),
        ({"specversion": "1.0", "type": "com.example.thing", "fssession": "s"}, "not a fleetsync event"),
        ({"specversion": "1.0", "type": "io.fleetsync.v1.hello"}, "no fssession"),
    ],
)
def test_foreign_or_incomplete_events_are_refused_with_the_reason(attributes: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        cloudevents.parse(attributes)


def test_broker_urls_carry_credentials_that_are_never_shown() -> None:
    address = parse_hub_url("mqtt://c1:s%40cret@broker.example:1883")
    assert (address.scheme, address.host, address.port, address.username, address.password) == ("mqtt", "broker.example", 1883, "c1", "s@cret")
    assert str(address) == "mqtt://c1@broker.example:1883"
    assert "s@cret" not in repr(address)
    with pytest.raises(ValueError) as error:
        parse_hub_url("kafka://c1:hunter2@broker:9092")
    assert "hunter2" not in str(error.value) and "scheme must be one of" in str(error.value)
    with pytest.raises(ValueError, match="no path"):
        parse_hub_url("nats://broker:4222/extra")
    with pytest.raises(ValueError, match="one of mqtt://, mqtts://, nats://"):
        parse_hub_url("grpc://hub:7443", schemes=("mqtt", "mqtts", "nats"))


def test_topics_and_subjects_name_the_cluster() -> None:
    assert mqtt_cluster(up_topic("eu-1")) == "eu-1"
    assert mqtt_cluster("fleetsync/v1/clusters/eu-1/down") is None
    assert nats_cluster(up_subject("eu-1")) == "eu-1"
    assert nats_cluster("fleetsync.v1.up.a.b") is None


@pytest.mark.parametrize("name", ["c1", "eu-west-1", "prod_cluster", "A" * 63])
def test_cluster_names_fit_for_topics_are_accepted(name: str) -> None:
    assert check_cluster_name(name) == name


@pytest.mark.parametrize("name", ["", "a.b", "a/b", "a+b", "a#", "a*", "a>", "a b", "-a", "a-", "A" * 64])
def test_cluster_names_that_would_break_a_topic_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cluster name"):
        check_cluster_name(name)
