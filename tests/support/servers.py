"""Servers the tests talk to, each on a free port of 127.0.0.1: ffmpeg as an MJPEG camera, a Mosquitto broker and a
paho subscriber that keeps what it hears, and `avcil serve` as a user starts it."""

from __future__ import annotations

import getpass
import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.media import need
from support.waiting import free_port, wait_for_port, wait_until


class MjpegCamera:
    """ffmpeg serving a looped video file as MJPEG over HTTP on 127.0.0.1 (one client per ffmpeg process, so a
    reconnecting client needs it started again)."""

    def __init__(self, video: Path):
        need("ffmpeg")
        self.video, self.port = video, free_port()
        self.url = f"http://127.0.0.1:{self.port}/cam"
        self.process: subprocess.Popen | None = None

    def start(self) -> "MjpegCamera":
        self.process = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.video), "-an", "-c:v", "mjpeg",
             "-q:v", "3", "-f", "mpjpeg", "-listen", "1", self.url], stdin=subprocess.DEVNULL)
        wait_for_port(self.process, "127.0.0.1", self.port, "ffmpeg's MJPEG camera")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def mosquitto() -> str:
    """The broker's program (Debian puts it in /usr/sbin, which a user's PATH may lack), or the test skips."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip("needs Debian's mosquitto (scripts/setup.sh installs it)")
    pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt (the `mqtt` extra)")
    return found


class Broker:
    """Mosquitto on 127.0.0.1:`port`, without persistence: a restart forgets every retained message, as a broker
    that lost its disk would. `passwords` {user: password} turns anonymous access off; `tls` (cert, key) makes the
    listener TLS-only."""

    def __init__(self, folder: Path, passwords: dict | None = None, tls: tuple[Path, Path] | None = None,
                 port: int | None = None):
        self.program = mosquitto()
        self.folder, self.port, self.process = folder, port or free_port(), None
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr",
                 f"user {getpass.getuser()}"]  # as root, mosquitto would otherwise switch to the `mosquitto` user
        if passwords:
            password_file = folder / "passwords"
            password_file.touch(mode=0o600)
            for user, password in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(password_file), user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> "Broker":
        self.log = open(self.folder / "mosquitto.log", "a")
        self.process = subprocess.Popen([self.program, "-c", str(self.config)], stdout=self.log, stderr=self.log)
        wait_for_port(self.process, "127.0.0.1", self.port, "mosquitto", log=self.log_text)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log_text(self) -> str:
        self.log.flush()
        return (self.folder / "mosquitto.log").read_text()


class Listener:
    """A paho subscriber to `topics` that keeps every message: (topic, JSON or text payload, retained flag)."""

    def __init__(self, port: int, topics: str = "#", user: str | None = None, password: str | None = None,
                 ca_file: Path | None = None):
        import paho.mqtt.client as paho

        self.messages: list[tuple[str, object, bool]] = []
        self.changed = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"listener-{time.monotonic_ns()}")
        if user:
            self.client.username_pw_set(user, password)
        if ca_file:
            import ssl

            self.client.tls_set_context(ssl.create_default_context(cafile=str(ca_file)))
        subscribed = threading.Event()
        self.client.on_connect = lambda client, *rest: client.subscribe(topics, qos=1)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._keep
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "the listener could not subscribe"

    def _keep(self, client, userdata, message) -> None:
        text = message.payload.decode()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = text
        with self.changed:
            self.messages.append((message.topic, payload, bool(message.retain)))
            self.changed.notify_all()

    def on(self, topic: str) -> list:
        """The payloads heard on `topic`, oldest first."""
        with self.changed:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait(self, done, timeout: float = 15, what: str = "") -> None:
        """Wait, woken by each message, until `done(self)`; fail saying `what` and every message heard."""
        with self.changed:
            if not self.changed.wait_for(lambda: done(self), timeout):
                raise AssertionError(f"timed out waiting for {what}: {self.messages}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Server:
    """`avcil serve` in a subprocess; `address` is the line it prints (with the token unless it read a file)."""

    def __init__(self, model: Path, camera_url: str, env: dict, *flags: str, mic: str = "pulse"):
        self.port = free_port()
        self.log = open(Path(model).parent / "serve.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "avcil.cli", "serve", "--model", str(model), "--camera", camera_url, "--mic",
             mic, "--port", str(self.port), "--hop", "0.5", "--smoothing", "1", "--score", "softmax",
             "--threshold", "0", *flags],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env={**os.environ, **env})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        try:
            self.address = lines.get(timeout=90).strip()
        except queue.Empty:
            self.stop()
            raise AssertionError(f"avcil serve printed no address:\n{self.stderr()}") from None

    def stderr(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def request(self, method: str, path: str, body=None, headers: dict | None = None, token: str | None = None,
                read: int | None = None) -> tuple[int, dict, bytes]:
        """One request; `read` bytes at most of the answer (for the endless MJPEG stream)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, dict):
            body, headers["Content-Type"] = json.dumps(body), "application/json"
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        data = response.read(read) if read else response.read()
        connection.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def api(self, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
        status, _, data = self.request(method, path, body, token=token)
        return status, json.loads(data)

    def poll(self, path: str, token: str, done, timeout: float, what: str) -> dict:
        """GET `path` until `done(answer)` and return that answer; fail saying `what`, the last answer and the
        server's log."""
        last: list[dict] = []

        def answered() -> dict | None:
            last[:] = [self.api("GET", path, token)[1]]
            return last[0] if done(last[0]) else None

        return wait_until(answered, timeout, lambda: f"{what}: {last[-1] if last else None}\n{self.stderr()}",
                          interval=0.2)

    def wait(self, token: str, done, timeout: float = 60, what: str = "") -> dict:
        """Poll /api/status until `done(status)`."""
        return self.poll("/api/status", token, done, timeout, what)

    def wait_job(self, token: str, timeout: float = 60) -> dict:
        """Poll /api/learn until the job is live or failed."""
        return self.poll("/api/learn", token, lambda job: job["state"] in ("live", "failed"), timeout,
                         "the learning job to finish")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode
