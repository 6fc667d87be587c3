"""Events and state to MQTT (avcil.runtime.mqtt) against a real Mosquitto broker started on a free port: Home
Assistant discovery, events, availability and the last will, a broker killed and restarted, refused credentials,
TLS, and `avcil run --mqtt` end to end. Skipped where Debian's `mosquitto` is not installed (scripts/setup.sh
installs it)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from avcil.cli import main
from avcil.errors import InvalidInput
from avcil.runtime.events import EventRelay, EventTracker
from avcil.runtime.mqtt import DEFAULT_PREFIX, MqttPublisher, MqttTarget, parse_url
from support.commands import avcil
from support.servers import Broker, Listener, mosquitto
from support.waiting import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red", "blue"]


@pytest.fixture
def brokers(tmp_path):
    """A factory: brokers(**options) -> a started Broker, killed after the test."""
    started: list[Broker] = []

    def start(**options) -> Broker:
        started.append(Broker(tmp_path / f"broker{len(started)}", **options).start())
        return started[-1]

    yield start
    for broker in started:
        broker.kill()


def target(port: int, device_id: str = "kitchen", tls: bool = False, user: str | None = None,
           password: str | None = None, ca_file: str | None = None) -> MqttTarget:
    return MqttTarget(tls, "127.0.0.1", port, user, password, DEFAULT_PREFIX, device_id, ca_file)


def decision(label: str, i: int, version: str = "v0001", score: float = 0.9) -> dict:
    """A decision of window i, 0.5 s hops of 1.5 s windows, made now."""
    return {"label": label, "score": score, "window": [i * 0.5, i * 0.5 + 1.5], "model_version": version,
            "time": time.time(), "latency_ms": {"total": 40.0}}


class Said(list):
    """The lines a publisher says, kept."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def about(self, words: str) -> list[str]:
        return [line for line in self if words in line]


def start_publisher(port: int, classes=CLASSES, **options) -> tuple[MqttPublisher, EventRelay, Said]:
    said = Said()
    names = list(classes)
    publisher = MqttPublisher(target(port, **options), classes=lambda: names, say=said)
    publisher.names = names  # the test changes the model's classes through it
    relay = EventRelay(EventTracker(1, 2), [publisher])
    return publisher.start("v0001"), relay, said


def feed(publisher: MqttPublisher, relay: EventRelay, labels: str, first: int = 0, version: str = "v0001") -> float:
    """One decision per character ('r' red, 'b' blue, '.' unknown) through the publisher and the relay, as the
    run's sink does; returns the longest a decision took there."""
    longest = 0.0
    for i, c in enumerate(labels, first):
        made = decision({"r": "red", "b": "blue", ".": "unknown"}[c], i, version)
        started = time.perf_counter()
        publisher.decision(made)
        relay(made)
        longest = max(longest, time.perf_counter() - started)
    return longest


# The URL ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, parsed", [
    ("mqtt://broker", (False, "broker", 1883, None, "avcil")),
    ("mqtts://avcil@broker.lan:8884/home/av", (True, "broker.lan", 8884, "avcil", "home/av")),
    ("mqtt://us%40er@10.0.0.2/", (False, "10.0.0.2", 1883, "us@er", "avcil")),
    ("mqtts://[::1]", (True, "::1", 8883, None, "avcil")),
])
def test_a_url_parses_to_its_parts(url, parsed):
    assert parse_url(url) == parsed


@pytest.mark.parametrize("url, why", [
    ("http://broker", "the scheme must be mqtt or mqtts"),
    ("broker:1883", "the scheme must be mqtt or mqtts"),
    ("mqtt://user:secret@broker", "a password in the URL is seen by everyone"),
    ("mqtt://", "no broker host"),
    ("mqtt://broker:99999", "out of range"),
    ("mqtt://broker:port", "port"),
    ("mqtt://broker:0", "port 0"),
    ("mqtt://@broker", "empty user"),
    ("mqtt://broker/a/+/b", "topic prefix"),
    ("mqtt://broker/a//b", "topic prefix"),
    ("mqtt://broker/$SYS", "topic prefix"),
    ("mqtt://broker?x=1", "query"),
])
def test_a_url_that_cannot_be_used_is_refused_saying_why(url, why):
    with pytest.raises(InvalidInput, match="expected mqtt://") as refused:
        parse_url(url)
    assert why in str(refused.value) and "secret" not in str(refused.value)


@pytest.mark.parametrize("flags, message", [
    (["--mqtt", "tcp://broker"], "the scheme must be mqtt or mqtts"),
    (["--mqtt", "mqtt://me:pw@broker"], "a password in the URL"),
    (["--mqtt-password-file", "p"], "--mqtt-password-file goes with --mqtt URL"),
    (["--mqtt", "mqtt://broker", "--mqtt-device-id", "my device"], "--mqtt-device-id 'my device'"),
    (["--mqtt", "mqtt://broker", "--mqtt-ca-file", "ca.pem"], "--mqtt-ca-file is for TLS"),
])
def test_run_and_serve_refuse_bad_mqtt_flags_in_one_line_before_loading_a_model(tmp_path, capsys, flags, message):
    for command in (["run", "--camera", "x.mp4"], ["serve", "--camera", "0", "--port", "0"]):
        code = main([*command, "--model", str(tmp_path / "no-model"), "--mic", "x.mp4", *flags])
        error = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(error) == 1 and message in error[0], (command, error)
        assert ":pw@" not in error[0]  # a password given in the URL anyway is not repeated


def test_the_password_comes_from_a_file_or_the_environment_and_needs_a_user(tmp_path, capsys, monkeypatch):
    import argparse

    from avcil.runtime.commands import add_parsers
    from avcil.runtime.mqtt import mqtt_target

    pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt (the `mqtt` extra)")
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    args = lambda *flags: parser.parse_args(["run", "--model", "m", "--mic", "x", *flags])  # noqa: E731
    assert mqtt_target(args("--mqtt", "mqtt://me@b", "--mqtt-password-file", str(password))).password == "s3cret"
    assert "s3cret" not in repr(mqtt_target(args("--mqtt", "mqtt://me@b", "--mqtt-password-file", str(password))))
    monkeypatch.setenv("AVCIL_MQTT_PASSWORD", "from-env")
    assert mqtt_target(args("--mqtt", "mqtt://me@b")).password == "from-env"
    with pytest.raises(InvalidInput, match="needs a user"):
        mqtt_target(args("--mqtt", "mqtt://b"))
    password.chmod(0o644)
    mqtt_target(args("--mqtt", "mqtt://me@b", "--mqtt-password-file", str(password)))
    assert "can be read by other users" in capsys.readouterr().err
    password.write_text("")
    with pytest.raises(InvalidInput, match="empty"):
        mqtt_target(args("--mqtt", "mqtt://me@b", "--mqtt-password-file", str(password)))


# Against the broker ---------------------------------------------------------------------------------------------
def test_discovery_events_state_and_availability(brokers):
    broker = brokers()
    listener = Listener(broker.port)
    publisher, relay, said = start_publisher(broker.port)
    try:
        listener.wait(lambda l: "online" in l.on("avcil/kitchen/availability"), what="online")
        feed(publisher, relay, "..rrr..bb.")  # red opens at window 2, closes after 2 misses; blue opens at 7
        listener.wait(lambda l: len(l.on("avcil/kitchen/event")) == 1, what="the red event")
        red = listener.on("avcil/kitchen/event")[0]
        assert {"label", "start", "end", "peak_score", "windows", "model_version", "start_time",
                "end_time"} <= set(red)
        assert (red["label"], red["event_type"], red["start"], red["end"], red["windows"]) == (
            "red", "red", 1.0, 3.5, 3)
        assert 0 < red["end_time"] - red["start_time"] == pytest.approx(2.5, abs=0.01)
        states = lambda: [s["event"] for s in listener.on("avcil/kitchen/state")]  # noqa: E731
        listener.wait(lambda l: states()[-1:] == ["blue"], what="the blue event under way")
        assert states() == ["none", "red", "none", "blue"]

        # A new version with a class more: discovery again, its event types the new classes.
        publisher.names.append("green")
        feed(publisher, relay, "rr", first=10, version="v0002")
        listener.wait(lambda l: any(c["event_types"] == CLASSES + ["green"]
                                    for c in l.on("homeassistant/event/avcil_kitchen/event/config")), what="v0002")

        # Retained, as a Home Assistant that starts later finds them: the configs, the state, 'online'.
        late = Listener(broker.port)
        late.wait(lambda l: len([m for m in l.messages if m[2]]) >= 4, what="retained messages")
        retained = {topic: payload for topic, payload, kept in late.messages if kept}
        event_config = retained["homeassistant/event/avcil_kitchen/event/config"]
        sensor_config = retained["homeassistant/sensor/avcil_kitchen/state/config"]
        for config in (event_config, sensor_config):
            assert config["availability_topic"] == "avcil/kitchen/availability"
            assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
            assert config["device"]["identifiers"] == ["avcil_kitchen"] and "v0002" in config["device"]["sw_version"]
            assert config["origin"]["name"] == "avcil"
        assert event_config["unique_id"] != sensor_config["unique_id"]
        assert event_config["state_topic"] == "avcil/kitchen/event"
        assert event_config["event_types"] == ["red", "blue", "green"]
        assert sensor_config["state_topic"] == sensor_config["json_attributes_topic"] == "avcil/kitchen/state"
        assert sensor_config["value_template"] == "{{ value_json.event }}"
        assert retained["avcil/kitchen/availability"] == "online"
        assert retained["avcil/kitchen/state"]["model_version"] == "v0002"
        assert "avcil/kitchen/event" not in retained  # events are not retained: each is said once
        late.close()
    finally:
        relay.close()  # the red event under way closes at the end, then 'offline'
    listener.wait(lambda l: l.on("avcil/kitchen/availability")[-1:] == ["offline"], what="offline")
    assert [e["label"] for e in listener.on("avcil/kitchen/event")] == ["red", "blue", "red"]
    assert said == [said[0]] and "connected to mqtt://127.0.0.1" in said[0], said
    listener.close()


def test_the_last_will_says_offline_when_the_process_dies(brokers):
    broker = brokers()
    listener = Listener(broker.port, "avcil/+/availability")
    script = textwrap.dedent(f"""
        import time
        from avcil.runtime.mqtt import MqttPublisher, MqttTarget
        target = MqttTarget(False, "127.0.0.1", {broker.port}, None, None, "avcil", "doomed")
        MqttPublisher(target, classes=lambda: ["red"]).start("v0001")
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        listener.wait(lambda l: l.on("avcil/doomed/availability") == ["online"], what="online")
        process.kill()
        process.wait()
        listener.wait(lambda l: l.on("avcil/doomed/availability") == ["online", "offline"], timeout=10,
                      what="the last will")
        # The broker said the will for it: nothing of the killed process could publish 'offline' itself.
        assert listener.on("avcil/doomed/availability") == ["online", "offline"]
        assert process.returncode == -signal.SIGKILL
    finally:
        process.kill()
        listener.close()


def test_a_broker_killed_and_restarted_gets_the_events_and_decisions_never_wait(brokers):
    broker = brokers()
    publisher, relay, said = start_publisher(broker.port)
    try:
        wait_until(lambda: publisher.status()["connected"], 10, "the publisher to connect")
        slowest = feed(publisher, relay, "rr..", first=0)  # red closed while connected
        broker.kill()
        wait_until(lambda: said.about("lost the broker"), 10, "the publisher to say it lost the broker")
        slowest = max(slowest, feed(publisher, relay, "bb..rr..", first=4))  # blue and red closed while it is away
        assert len(said.about("lost the broker")) == 1, said
        time.sleep(1.5)  # a retry or two fail meanwhile: said once
        broker.start()
        listener = Listener(broker.port)  # subscribed before the publisher's next try (3 s after the loss)
        wait_until(lambda: said.about("is back"), 20, lambda: f"the publisher to say the broker is back: {said}")
        slowest = max(slowest, feed(publisher, relay, "bb..", first=12))  # after it is back
        listener.wait(lambda l: ("blue", 6.0) in [(e["label"], e["start"]) for e in l.on("avcil/kitchen/event")],
                      what="the events kept and the new one")
        arrived = [(e["label"], e["start"]) for e in listener.on("avcil/kitchen/event")]
        # QoS 1 is at least once: the red event sent just before the kill, if the broker had not acknowledged it,
        # comes again after the kept ones.
        assert [e for e in arrived if e != ("red", 0.0)] == [("blue", 2.0), ("red", 4.0), ("blue", 6.0)], arrived
        assert arrived.count(("red", 0.0)) <= 1, arrived
        # The restarted broker lost its retained messages; they are published again.
        listener.wait(lambda l: l.on("homeassistant/event/avcil_kitchen/event/config")
                      and "online" in l.on("avcil/kitchen/availability"), what="discovery again")
        assert len(said.about("lost the broker")) == 1 and len(said.about("cannot connect")) == 0, said
        assert len(said.about("is back")) == 1 and "2 events kept meanwhile sent" in said.about("is back")[0], said
        assert slowest < 0.05, f"a decision waited {slowest * 1000:.0f} ms for the network"
        listener.close()
    finally:
        relay.close()


def test_events_wait_for_a_broker_that_is_not_up_yet(tmp_path):
    mosquitto()
    port, broker = free_port(), None
    publisher, relay, said = start_publisher(port)
    try:
        feed(publisher, relay, "rr..")
        wait_until(lambda: said.about("cannot connect to mqtt://127.0.0.1"), 10,
                   lambda: f"the publisher to say it cannot connect: {said}")
        broker = Broker(tmp_path / "late", port=port).start()
        listener = Listener(port, "avcil/kitchen/event")
        listener.wait(lambda l: [e["label"] for e in l.on("avcil/kitchen/event")] == ["red"], timeout=20,
                      what="the red event, once the broker is up")
        listener.close()
        assert len(said.about("cannot connect to mqtt://127.0.0.1")) == 1, said  # however many tries failed
    finally:
        relay.close()
        if broker is not None:
            broker.kill()


def test_refused_credentials_are_one_line_and_recognition_goes_on(brokers):
    broker = brokers(passwords={"avcil": "right"})
    publisher, relay, said = start_publisher(broker.port, user="avcil", password="wrong")
    try:
        wait_until(lambda: broker.log_text().count("not authorised") >= 2, 15,
                   lambda: f"two refused tries in the broker's log:\n{broker.log_text()}")
        slowest = feed(publisher, relay, "rr..bb")
        assert broker.log_text().count("not authorised") >= 2, broker.log_text()
        refused = said.about("refused the connection")
        assert len(said) == 1 and len(refused) == 1, said
        assert "for user 'avcil': check the user and the password" in refused[0] and "wrong" not in refused[0]
        assert slowest < 0.05
    finally:
        relay.close()
    # The right password is let in, and what it publishes arrives.
    listener = Listener(broker.port, "avcil/#", user="avcil", password="right")
    publisher, relay, said = start_publisher(broker.port, user="avcil", password="right")
    feed(publisher, relay, "rr..")
    relay.close()
    listener.wait(lambda l: [e["label"] for e in l.on("avcil/kitchen/event")] == ["red"], what="the red event")
    listener.close()


def test_tls_with_a_private_ca(brokers, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make the broker's certificate")
    cert, key = tmp_path / "broker.pem", tmp_path / "broker.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    broker = brokers(tls=(cert, key))
    listener = Listener(broker.port, "avcil/#", ca_file=cert)

    publisher, relay, said = start_publisher(broker.port, tls=True, ca_file=str(cert))
    feed(publisher, relay, "bb..")
    relay.close()
    listener.wait(lambda l: [e["label"] for e in l.on("avcil/kitchen/event")] == ["blue"], what="the blue event")
    assert "connected to mqtts://127.0.0.1" in said[0], said
    listener.close()
    # Without the CA, the system's CAs do not trust it: one line, nothing published.
    publisher, relay, said = start_publisher(broker.port, tls=True)
    wait_until(lambda: said.about("or TLS failed"), 10, lambda: f"the publisher to say TLS failed: {said}")
    relay.close()
    assert len(said.about("or TLS failed")) == 1, said


# Through the command line ---------------------------------------------------------------------------------------
def test_run_publishes_the_events_it_writes(brokers, toy_model, toy_clips, tmp_path):
    broker = brokers()
    listener = Listener(broker.port)
    files = ",".join(str(p) for p in [toy_clips["red"][4], toy_clips["blue"][4]])
    events_file = tmp_path / "events.jsonl"
    run = avcil("run", "--model", toy_model, "--camera", files, "--mic", files, "--slot", "2.5", "--hop", "0.5",
                "--smoothing", "1", "--score", "softmax", "--threshold", "0", "--events", events_file,
                "--event-start", "2", "--event-end", "2", "--quiet", "--mqtt", f"mqtt://127.0.0.1:{broker.port}/home",
                "--mqtt-device-id", "porch")
    written = [json.loads(line) for line in events_file.read_text().splitlines()]
    listener.wait(lambda l: len(l.on("home/porch/event")) == len(written), what="the events of the run")
    published = listener.on("home/porch/event")
    assert [e["label"] for e in written] == ["red", "blue"]
    assert [{k: v for k, v in e.items() if k != "event_type"} for e in published] == written
    assert all(e["event_type"] == e["label"] for e in published)
    config = listener.on("homeassistant/event/avcil_porch/event/config")[-1]
    assert config["event_types"] == ["red", "blue"] and config["state_topic"] == "home/porch/event"
    assert listener.on("home/porch/availability") == ["online", "offline"]
    assert "mqtt: connected to mqtt://127.0.0.1" in run.stderr
    listener.close()


def test_run_with_refused_credentials_says_so_once_and_still_writes_its_events(brokers, toy_model, toy_clips,
                                                                               tmp_path):
    broker = brokers(passwords={"avcil": "right"})
    files = ",".join(str(p) for p in [toy_clips["red"][4], toy_clips["blue"][4]])
    events_file = tmp_path / "events.jsonl"
    run = avcil("run", "--model", toy_model, "--camera", files, "--mic", files, "--slot", "2.5", "--hop", "0.5",
                "--smoothing", "1", "--score", "softmax", "--threshold", "0", "--events", events_file, "--quiet",
                "--mqtt", f"mqtt://avcil@127.0.0.1:{broker.port}", env={"AVCIL_MQTT_PASSWORD": "wrong"})
    lines = [line for line in run.stderr.splitlines() if line.startswith("mqtt:")]
    assert len([line for line in lines if "refused the connection" in line]) == 1, run.stderr
    assert "wrong" not in run.stderr and "Traceback" not in run.stderr
    assert [json.loads(line)["label"] for line in events_file.read_text().splitlines()] == ["red", "blue"]
    assert "events did not reach" in lines[-1], lines
