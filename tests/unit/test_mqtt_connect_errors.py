"""The mqtt consumer says why it cannot reach a broker (a name that does not resolve, a port
nobody listens on, a server that never answers) and, when a real broker (mosquitto) refuses its
credentials, how to give them."""

from __future__ import annotations

import socket

import pytest

from pipeline.client.consumers.mqtt import MqttConsumer, MqttError
from tests.support.mqtt_broker import Broker, free_port

NAME = "mqttunreachable"


def start_up_line(capsys: pytest.CaptureFixture[str], broker: str) -> str:
    """The consumer's line about the broker at start-up (it goes on retrying; closed here)."""
    MqttConsumer(broker=broker, name=NAME).close()
    lines = capsys.readouterr().err.splitlines()
    return next(line for line in lines if "broker" in line)


def test_a_name_that_does_not_resolve_is_a_dns_failure(capsys):
    assert start_up_line(capsys, "mqtt://no-such-host.invalid").startswith(
        "mqtt: cannot reach the broker at no-such-host.invalid:1883 yet: DNS failure, the name "
        "'no-such-host.invalid' does not resolve (")


def test_a_port_nobody_listens_on_is_a_refused_connection(capsys):
    port = free_port()
    assert start_up_line(capsys, f"mqtt://127.0.0.1:{port}").startswith(
        f"mqtt: cannot reach the broker at 127.0.0.1:{port} yet: connection refused, nothing "
        f"listens on that port there or a firewall rejects it; retrying")


def test_a_server_that_never_answers_is_said_so(capsys):
    """It accepts the connection (the kernel does) and never reads the MQTT greeting."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        assert start_up_line(capsys, f"mqtt://127.0.0.1:{port}").startswith(
            f"mqtt: cannot reach the broker at 127.0.0.1:{port} yet: no answer within 3 s; retrying")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("auth"), passwords={"shed": "s3cret"})
    yield broker
    broker.stop()


@pytest.mark.parametrize("env, said", [
    ({}, "; it wants a user name and password: set MQTT_USERNAME and MQTT_PASSWORD in the "
         "environment of pipeline-attach (of pipeline-up for [[consumers]])"),
    ({"MQTT_USERNAME": "shed", "MQTT_PASSWORD": "wrong"},
     "; check MQTT_USERNAME ('shed') and MQTT_PASSWORD in the environment"),
])
def test_refused_credentials_say_how_to_give_them(guarded, monkeypatch, env, said):
    for variable in ("MQTT_USERNAME", "MQTT_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(MqttError) as refused:
        MqttConsumer(broker=guarded.url, name=NAME)
    assert str(refused.value).startswith(f"the broker at 127.0.0.1:{guarded.port} refused the "
                                         f"connection: ")
    assert str(refused.value).endswith(said)


def test_the_right_credentials_are_taken(guarded, monkeypatch, capsys):
    monkeypatch.setenv("MQTT_USERNAME", "shed")
    monkeypatch.setenv("MQTT_PASSWORD", "s3cret")
    MqttConsumer(broker=guarded.url, name=NAME).close()
    assert f"mqtt: publishing to 127.0.0.1:{guarded.port} under " in capsys.readouterr().err
