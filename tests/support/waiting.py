"""Polling until a deadline instead of sleeping a fixed time, and ports: a free one, whether one is listening."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str | Callable[[], str],
               interval: float = 0.05) -> T:
    """Call `predicate` every `interval` seconds until it returns something true, and return that; after `timeout`
    seconds fail saying what was awaited (`what`, or what it returns when called: the state at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp and tcp6 write them) with a socket listening on `port`. Read from
    /proc rather than probed: a probe connection would use up ffmpeg's one client, or show in a broker's log."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local.endswith(f":{port:04X}"):
                found.add(local.rsplit(":", 1)[0])
    return found


def port_listening(host: str, port: int) -> bool:
    """Whether a socket listens on IPv4 `host`:`port`, bound to that address or to every address."""
    wanted = socket.inet_aton(host)[::-1].hex().upper()  # /proc writes an IPv4 address little-endian
    return bool(listening_addresses(port) & {wanted, "00000000", "0" * 32})


def wait_for_port(process: subprocess.Popen, host: str, port: int, what: str, timeout: float = 10,
                  log: Callable[[], str] = lambda: "") -> None:
    """Wait until `process` (the server called `what`) listens on `host`:`port`; fail at once if it exits first,
    saying so with its `log`."""
    wait_until(lambda: port_listening(host, port) or process.poll() is not None, timeout,
               lambda: f"{what} to listen on {host}:{port}\n{log()}", interval=0.02)
    if process.poll() is not None:
        raise AssertionError(f"{what} exited ({process.returncode}) before listening on {host}:{port}\n{log()}")
