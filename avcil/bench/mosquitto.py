"""A Mosquitto broker the benchmarks can kill and restart, and a subscriber that records what reaches it."""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Debian's mosquitto on `port`, without persistence: a kill loses what it held, as a crashed broker would."""

    def __init__(self, folder: Path, port: int):
        self.port, self.process = port, None
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                               f"user {getpass.getuser()}\n")
        self.log = open(folder / "mosquitto.log", "a")

    def start(self) -> None:
        self.process = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(self.config)],
                                        stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def close(self) -> None:
        self.kill()
        self.log.close()


class Subscriber:
    """Every message under `topics`, with its wall-clock arrival; reconnects by itself (paho) and subscribes again."""

    def __init__(self, port: int, topics: str):
        import paho.mqtt.client as paho

        self.messages: list[tuple[float, str, str]] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="mqtt-outage-subscriber")
        self.client.reconnect_delay_set(0.2, 0.5)
        self.client.on_connect = lambda client, *rest: client.subscribe(topics, qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append((time.time(), m.topic, m.payload.decode()))
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
