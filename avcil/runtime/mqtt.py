"""Recognition events and the device's state to an MQTT broker, announced to Home Assistant (`--mqtt URL`).

    target = mqtt_target(args)               # URL, password, device id checked before a model loads
    publisher = MqttPublisher(target, classes=lambda: recognizer.class_names).start(recognizer.version)
    publisher.decision(decision)             # a new model version: discovery and state again (its classes)
    relay = EventRelay(tracker, [publisher, ...])   # publisher.event / .ongoing (avcil.runtime.events)
    relay.close()                            # ... and publisher.close(): 'offline', a moment for the last events

Topics (docs/architecture.md#mqtt), BASE = <prefix>/<device id>:

    BASE/availability   "online" (retained) once connected; "offline" at the end, and as the last will when the
                        process dies or its connection drops
    BASE/state          {"event", "since", "model_version", "classes"} (retained): the open event's label, or "none"
    BASE/event          each event as it closes: its keys (avcil.runtime.events) and `event_type`, its label
    homeassistant/event/avcil_<id>/event/config, homeassistant/sensor/avcil_<id>/state/config   (retained)

A decision never waits for the network: paho's own thread connects, reconnects with back-off and writes, and
publishing only queues a packet for it. Events closed while the broker is away are kept (the newest
KEPT_WHILE_AWAY) and sent when it is back; the state and the discovery configs are sent again at each connection,
so the broker's retained copies are the latest even after it restarted without them. A broker that cannot be
reached, refuses the credentials or goes away is one line on stderr (not one per retry); its return is another.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from avcil import __version__
from avcil.errors import InvalidInput, MissingPackage

SCHEMES = {"mqtt": 1883, "mqtts": 8883}  # the scheme's default port
DEFAULT_PREFIX = "avcil"
DISCOVERY_PREFIX = "homeassistant"  # Home Assistant's default discovery prefix
PASSWORD_ENV = "AVCIL_MQTT_PASSWORD"
DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what Home Assistant allows in a discovery topic's node id
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 8  # paho doubles the wait after each failed try, up to the max
KEEPALIVE_S = 15  # a broker that vanished without closing the connection is noticed within 1.5 times this
KEPT_WHILE_AWAY = 1000  # events kept for a broker that is away: hours of events at a few a minute
PAHO_QUEUE = 2000  # paho's own cap on messages not yet acknowledged (its queue while a connection is half-dead)
CLOSE_WAIT_S = 3.0  # the end of a run waits this long for the broker to take its last events
URL_FORM = "mqtt://[user@]host[:port][/prefix] (or mqtts:// for TLS)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttTarget:
    """Where to publish, checked: the broker, the credentials (the password never from the command line), the
    topic prefix and this device's id."""

    tls: bool
    host: str
    port: int
    user: str | None
    password: str | None = field(repr=False)
    prefix: str
    device_id: str
    ca_file: str | None = None

    @property
    def broker(self) -> str:
        """The broker as the lines name it (without the user or the password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"


def parse_url(url: str) -> tuple[bool, str, int, str | None, str]:
    """(tls, host, port, user, prefix) of `mqtt://[user@]host[:port][/prefix]`; InvalidInput naming what is wrong."""
    def refuse(why: str) -> InvalidInput:
        shown = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)  # a password given anyway is not repeated
        return InvalidInput(f"--mqtt {shown!r}: {why}; expected {URL_FORM}")

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:  # a port that is no number or out of range, a bad IPv6 address
        raise refuse(str(error)) from None
    if parts.scheme not in SCHEMES:
        raise refuse(f"the scheme must be mqtt or mqtts, not {parts.scheme or 'missing'!r}")
    if parts.password is not None:
        raise refuse(f"a password in the URL is seen by everyone who can run `ps`; give it in a file "
                     f"(--mqtt-password-file) or in ${PASSWORD_ENV}")
    if not parts.hostname:
        raise refuse("no broker host")
    if port == 0:
        raise refuse("port 0 is no broker's port")
    if parts.query or parts.fragment:
        raise refuse("a query or fragment means nothing here")
    user = None if parts.username is None else unquote(parts.username)
    if user == "":
        raise refuse("an empty user name before '@'")
    prefix = parts.path.strip("/") or DEFAULT_PREFIX
    for level in prefix.split("/"):
        # Wildcards and '$' topics are the broker's; an empty level is a double slash, almost always a typo.
        if not level or "+" in level or "#" in level or level.startswith("$") or not level.isprintable():
            raise refuse(f"the topic prefix {prefix!r} must be levels of printable text without '+', '#' or a "
                         f"leading '$', separated by single '/'")
    return parts.scheme == "mqtts", parts.hostname, port or SCHEMES[parts.scheme], user, prefix


def read_password(path: str | None) -> str | None:
    """The password of --mqtt-password-file (its first line), else of $AVCIL_MQTT_PASSWORD, else None. A file that
    others may read is used, with a one-line warning."""
    if path is None:
        return os.environ.get(PASSWORD_ENV) or None
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidInput(f"--mqtt-password-file {path}: not UTF-8 text; expected the password on one line") from None
    if not lines or not lines[0]:
        raise InvalidInput(f"--mqtt-password-file {path}: empty; expected the password on its first line")
    mode = Path(path).stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: --mqtt-password-file {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
              f"`chmod 600 {path}` keeps the password to its owner", file=sys.stderr)
    return lines[0]


def default_device_id() -> str:
    """This machine's host name, with what a topic or Home Assistant's ids cannot hold replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "avcil"


def mqtt_target(args) -> MqttTarget | None:
    """The target of --mqtt and its companion flags (None without --mqtt); InvalidInput for any that cannot be
    used, and MissingPackage without paho-mqtt, before a model is loaded."""
    companions = [flag for flag in ("mqtt_password_file", "mqtt_device_id", "mqtt_ca_file")
                  if getattr(args, flag, None) is not None]
    if not args.mqtt:
        if companions:
            raise InvalidInput(f"--{companions[0].replace('_', '-')} goes with --mqtt URL")
        return None
    tls, host, port, user, prefix = parse_url(args.mqtt)
    device_id = args.mqtt_device_id if args.mqtt_device_id is not None else default_device_id()
    if not DEVICE_ID.fullmatch(device_id):
        raise InvalidInput(f"--mqtt-device-id {device_id!r}: 1 to 64 letters, digits, '_' or '-' (it is part of "
                           f"the topics and of Home Assistant's ids)")
    if args.mqtt_ca_file is not None:
        if not tls:
            raise InvalidInput("--mqtt-ca-file is for TLS: give an mqtts:// URL")
        if not Path(args.mqtt_ca_file).is_file():
            raise InvalidInput(f"--mqtt-ca-file {args.mqtt_ca_file}: no such file")
    password = read_password(args.mqtt_password_file)
    if password is not None and user is None:
        raise InvalidInput(f"an MQTT password needs a user: {'mqtts' if tls else 'mqtt'}://USER@{host}...")
    _paho()
    return MqttTarget(tls, host, port, user, password, prefix, device_id, args.mqtt_ca_file)


def _paho():
    try:
        import paho.mqtt.client as paho
    except ImportError:
        raise MissingPackage("--mqtt needs paho-mqtt: pip install 'avcil[mqtt]'") from None
    return paho


def add_mqtt_flags(parser) -> None:
    """--mqtt and its companions, shared by `avcil run` and `avcil serve`; checked by mqtt_target."""
    parser.add_argument("--mqtt", metavar="URL", help=f"publish each event and the device's state to this MQTT "
                        f"broker, announced to Home Assistant by MQTT discovery: {URL_FORM}; prefix default "
                        f"{DEFAULT_PREFIX!r} (README: Events to Home Assistant)")
    parser.add_argument("--mqtt-password-file", metavar="F", help=f"the broker password, the first line of this "
                        f"file (default: ${PASSWORD_ENV}; never in the URL, where `ps` would show it)")
    parser.add_argument("--mqtt-device-id", metavar="ID", help="this device in the topics and in Home Assistant "
                        "(default: the host name)")
    parser.add_argument("--mqtt-ca-file", metavar="F", help="with mqtts://: trust the broker certificate this CA "
                        "file signed (default: the system's CAs)")


class MqttPublisher:
    """Events, state and Home Assistant discovery to one broker, from a recogniser's decisions and events. An
    EventOutlet (avcil.runtime.events) with `decision` beside it; `status()` for the page."""

    def __init__(self, target: MqttTarget, classes: Callable[[], list[str]],
                 say: Callable[[str], None] | None = None):
        self.target, self.classes = target, classes
        self.say = say if say is not None else (lambda line: print(line, file=sys.stderr, flush=True))
        base = target.base
        self.topics = {"availability": f"{base}/availability", "state": f"{base}/state", "event": f"{base}/event"}
        node = f"{DISCOVERY_PREFIX}/{{}}/avcil_{target.device_id}"
        self.discovery_topics = {"event": f"{node.format('event')}/event/config",
                                 "sensor": f"{node.format('sensor')}/state/config"}
        self.client = None
        # Shared by the decision thread and paho's: held while publishing (paho takes its own locks after it, never
        # the other way round: no callback used here runs under paho's locks).
        self._lock = threading.Lock()
        self._connected = False
        self._up = threading.Event()
        self._ever_connected = False
        self._closing = False
        self._version: str | None = None
        self._state: dict = {"event": "none", "since": round(time.time(), 3), "model_version": None, "classes": []}
        self._away: deque[str] = deque(maxlen=KEPT_WHILE_AWAY)  # event payloads closed while the broker is away
        self._unacknowledged: deque = deque()  # paho's MQTTMessageInfo of events sent, until the broker has them
        self._dropped = 0
        self._down_since: float | None = None
        self._said: str | None = None  # the kind of trouble last announced: each is said once, not per retry

    # Connecting ---------------------------------------------------------------------------------------------
    def start(self, version: str) -> "MqttPublisher":
        """Connect in the background (paho's network thread) and return at once."""
        paho = _paho()
        target = self.target
        self._version = version
        self._state.update(model_version=version, classes=list(self.classes()))
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"avcil-{target.device_id}",
                             protocol=paho.MQTTv311)
        if target.user is not None:
            client.username_pw_set(target.user, target.password)
        if target.tls:
            import ssl

            client.tls_set_context(ssl.create_default_context(cafile=target.ca_file))
        client.will_set(self.topics["availability"], "offline", qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(PAHO_QUEUE)
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        # A bug in a callback is logged, not raised in paho's thread, where it would end reconnecting for good.
        client.suppress_exceptions = True
        client.enable_logger(log)
        client.connect_async(target.host, target.port, keepalive=KEEPALIVE_S)
        self.client = client
        client.loop_start()
        return self

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            credentials = reason.getName() in ("Bad user name or password", "Not authorized")
            self._trouble("refused", f"mqtt: the broker {self.target.broker} refused the connection ({reason})"
                          + (f" for user {self.target.user!r}: check the user and the password (--mqtt-password-file"
                             f" or ${PASSWORD_ENV})" if credentials and self.target.user else "")
                          + "; recognition goes on without it, retrying with back-off")
            return
        with self._lock:
            if self._closing:
                return  # a connection made while the run ends: 'online' now would outlive it
            self._connected = True
            self._publish(self.topics["availability"], "online", retain=True)
            self._announce()
            kept = list(self._away)
            self._away.clear()
            for payload in kept:
                self._send_event(payload)
            dropped, self._dropped = self._dropped, 0
        self._up.set()
        target = self.target
        if not self._ever_connected:
            self._ever_connected = True
            self.say(f"mqtt: connected to {target.broker} as {target.device_id!r}: events on "
                     f"{self.topics['event']}, Home Assistant discovery under {DISCOVERY_PREFIX}/")
        else:
            away = f" after {time.monotonic() - self._down_since:.1f} s" if self._down_since is not None else ""
            self.say(f"mqtt: the broker {target.broker} is back{away}; {len(kept)} events kept meanwhile sent"
                     + (f", {dropped} older ones dropped" if dropped else ""))
        self._down_since, self._said = None, None

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
        self._up.clear()
        if was_connected and not self._closing:
            # A broker that vanished gives no reason ("Unspecified error"); one that said why is named.
            why = "" if reason.getName() == "Unspecified error" else f" ({reason})"
            self._trouble("lost", f"mqtt: lost the broker {self.target.broker}{why}; recognition goes on, events "
                                  f"kept for it while it reconnects with back-off")

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._closing:
            how = "nothing answers there, the name does not resolve" + (", or TLS failed" if self.target.tls else "")
            self._trouble("unreachable", f"mqtt: cannot connect to {self.target.broker} ({how}); recognition goes "
                                         f"on, events kept for it while it retries with back-off")

    def _trouble(self, kind: str, line: str) -> None:
        """Say a connection problem once: not again per retry, nor 'unreachable' after 'lost' (the same outage)."""
        if self._down_since is None:
            self._down_since = time.monotonic()
        if self._said is None or (kind == "refused" and self._said != "refused"):
            self._said = kind
            self.say(line)

    # What is published --------------------------------------------------------------------------------------
    def decision(self, decision: dict) -> None:
        """Follow the model: a decision of a new version sends discovery (its classes are the event types) and the
        state again."""
        version = decision.get("model_version")
        if version == self._version:
            return
        names = list(self.classes())
        with self._lock:
            self._version = version
            self._state.update(model_version=version, classes=names)
            if self._connected:
                self._announce()

    def event(self, event: dict) -> None:
        """An event, closed: to BASE/event now, or kept until the broker is back."""
        payload = json.dumps({**event, "event_type": event["label"]})
        with self._lock:
            if self._connected:
                self._send_event(payload)
                return
            if len(self._away) == self._away.maxlen:
                self._dropped += 1
                if self._dropped == 1:
                    self.say(f"mqtt: {KEPT_WHILE_AWAY} events are waiting for the broker; the oldest are dropped "
                             f"from now on")
            self._away.append(payload)

    def ongoing(self, event: dict | None) -> None:
        """The open event changed: the state says which (or "none") and since when."""
        since = event.get("start_time") if event is not None else None
        with self._lock:
            self._state.update(event=event["label"] if event is not None else "none",
                               since=since if since is not None else round(time.time(), 3))
            if self._connected:
                self._publish(self.topics["state"], json.dumps(self._state), retain=True)

    def close(self) -> None:
        """'offline', after the events kept and sent have reached the broker (up to CLOSE_WAIT_S each); a line for
        those that did not."""
        if self.client is None:
            return
        if self._away and self._said is None and not self._up.is_set():
            # The first connection is still under way (nothing was said against it): a short run that ends before
            # the broker answered still gives it its events.
            self._up.wait(CLOSE_WAIT_S)
        with self._lock:
            self._closing = True
            offline = self._publish(self.topics["availability"], "offline", retain=True) if self._connected else None
        if offline is not None:
            try:
                offline.wait_for_publish(CLOSE_WAIT_S)  # the broker acknowledges in order: the events came first
            except (ValueError, RuntimeError):
                pass
        with self._lock:
            self._forget_acknowledged()
            undelivered = len(self._away) + len(self._unacknowledged)
        if undelivered:
            self.say(f"mqtt: {undelivered} events did not reach {self.target.broker} before the end")
        self.client.disconnect()
        # loop_stop joins paho's thread, which may sit in a connection attempt (up to its timeout); the end of a
        # run does not wait for that.
        stopper = threading.Thread(target=self.client.loop_stop, name="mqtt stop", daemon=True)
        stopper.start()
        stopper.join(CLOSE_WAIT_S)

    def status(self) -> dict:
        """For the page: the broker, this device's topics' base, and whether it is connected now (`state`
        connected, away, or closed once recognition ended)."""
        state = "closed" if self._closing else "connected" if self._connected else "away"
        return {"broker": self.target.broker, "device_id": self.target.device_id, "base": self.target.base,
                "connected": self._connected, "state": state}

    # Under the lock -----------------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: str, retain: bool = False):
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def _send_event(self, payload: str) -> None:
        info = self._publish(self.topics["event"], payload)
        self._forget_acknowledged()
        if info.rc == 0:
            self._unacknowledged.append(info)
        # Otherwise paho holds it for its next connection (a connection that died a moment ago) or refused it
        # (PAHO_QUEUE reached): either way nothing more to follow here.

    def _forget_acknowledged(self) -> None:
        while self._unacknowledged and self._unacknowledged[0].is_published():
            self._unacknowledged.popleft()

    def _announce(self) -> None:
        """The discovery configs and the state, retained: sent at each connection and for each new version."""
        for component, config in self.discovery().items():
            self._publish(self.discovery_topics[component], json.dumps(config), retain=True)
        self._publish(self.topics["state"], json.dumps(self._state), retain=True)

    def discovery(self) -> dict[str, dict]:
        """Home Assistant's MQTT discovery configs: an `event` entity whose event types are the model's classes, and
        a `sensor` of the open event's label, both of one device, available while this process is connected."""
        device_id, topics = self.target.device_id, self.topics
        shared = {
            "availability_topic": topics["availability"], "payload_available": "online",
            "payload_not_available": "offline", "qos": 1,
            "device": {"identifiers": [f"avcil_{device_id}"], "name": f"avcil {device_id}", "manufacturer": "avcil",
                       "model": "audio-visual recogniser", "sw_version": f"avcil {__version__}, model {self._version}"},
            "origin": {"name": "avcil", "sw_version": __version__},
        }
        return {
            "event": {**shared, "name": "Recognised", "unique_id": f"avcil_{device_id}_event",
                      "state_topic": topics["event"], "event_types": list(self._state["classes"]),
                      "icon": "mdi:ear-hearing"},
            "sensor": {**shared, "name": "Current event", "unique_id": f"avcil_{device_id}_state",
                       "state_topic": topics["state"], "value_template": "{{ value_json.event }}",
                       "json_attributes_topic": topics["state"], "icon": "mdi:ear-hearing"},
        }
