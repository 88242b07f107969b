"""Transports are found by URL scheme in one table; each module registers what it serves."""

from __future__ import annotations

import pytest

from fleetsync.transport import registry
from fleetsync.transport.base import BROKER_SCHEMES, SCHEMES, TRANSPORTS, TransportError
from fleetsync.transport.mqtt_hub import MqttHubServer
from fleetsync.transport.nats_hub import NatsHubServer


def test_every_scheme_in_the_table_has_a_connector_and_every_broker_a_listener() -> None:
    assert set(SCHEMES) == set(TRANSPORTS) == {"grpc", "grpcs", "mqtt", "mqtts", "nats"}
    assert all(callable(registry.connector_for(scheme)) for scheme in SCHEMES)
    assert BROKER_SCHEMES == ("mqtt", "mqtts", "nats")
    assert [registry.listener_for(scheme) for scheme in BROKER_SCHEMES] == [MqttHubServer, MqttHubServer, NatsHubServer]


def test_an_unknown_scheme_or_a_scheme_with_no_broker_listener_is_refused_by_name() -> None:
    with pytest.raises(TransportError, match=r"no transport for kafka://"):
        registry.connector_for("kafka")
    with pytest.raises(ValueError, match=r"a broker URL is one of mqtt://, mqtts://, nats://, not grpc://"):
        registry.listener_for("grpc")
