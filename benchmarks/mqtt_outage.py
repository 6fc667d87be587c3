"""A broker killed and restarted during `avcil run --mqtt` on paced files: how late the decisions were before, during
and after the outage, and which events reached a subscriber after the broker came back.

    python3 benchmarks/mqtt_outage.py --model MODEL --clips A.mp4 B.mp4 ... [--duration 60] [--kill-at 20]
                                      [--down-for 10] [--out benchmarks/results/mqtt-outage]

The clips are played in turn, looped, as camera and microphone (`avcil run --camera A,B,.. --mic A,B,.. --loop`).
The broker (Debian's mosquitto, on a free port, without persistence) is killed `--kill-at` seconds after the first
decision and started again `--down-for` seconds later. Writes OUT.json and OUT.md. A measurement, not a test: the
README's "Events to Home Assistant" section cites its result.
"""

from __future__ import annotations

import argparse
import getpass
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def phase_row(name: str, decisions: list[dict], hop_s: float) -> dict:
    lateness = [d["latency_ms"]["total"] for d in decisions]
    gaps = [b["time"] - a["time"] for a, b in zip(decisions, decisions[1:])]
    return {"phase": name, "decisions": len(decisions), "lateness_p50_ms": round(percentile(lateness, 0.5), 1),
            "lateness_max_ms": round(max(lateness), 1) if lateness else None,
            "late_by_more_than_a_hop": sum(value > hop_s * 1000 for value in lateness),
            "longest_gap_s": round(max(gaps), 3) if gaps else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--clips", nargs="+", required=True)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--kill-at", type=float, default=20.0)
    parser.add_argument("--down-for", type=float, default=10.0)
    parser.add_argument("--out", default="benchmarks/results/mqtt-outage")
    parser.add_argument("--note", default="", help="what the model, the clips and the machine were, for OUT.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mqtt-outage-"))
    broker = Broker(work, free_port())
    broker.start()
    subscriber = Subscriber(broker.port, "avcil/bench/#")
    files = ",".join(args.clips)
    jsonl, events_file = work / "decisions.jsonl", work / "events.jsonl"
    command = [sys.executable, "-m", "avcil.cli", "run", "--model", args.model, "--camera", files, "--mic", files,
               "--loop", "--duration", str(args.duration), "--jsonl", str(jsonl), "--events", str(events_file),
               "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--mqtt-device-id", "bench", "--quiet"]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(run.stderr), daemon=True)
    reader.start()
    while run.poll() is None and not (jsonl.exists() and jsonl.stat().st_size):
        time.sleep(0.05)
    first = time.time()
    time.sleep(max(0.0, first + args.kill_at - time.time()))
    broker.kill()
    killed = time.time()
    time.sleep(args.down_for)
    broker.start()
    restarted = time.time()
    run.wait()
    reader.join(5)
    time.sleep(1.0)  # the last messages
    subscriber.close()
    broker.kill()

    every = [json.loads(line) for line in jsonl.read_text().splitlines()]
    ends = [d["window"][1] for d in every]
    hop_s = round(sorted(b - a for a, b in zip(ends, ends[1:]))[len(ends) // 2], 3)  # the median step
    decisions = every[1:]  # the first decision also warms the encoders up: not the network's doing
    back_lines = [line for line in stderr_lines if "is back" in line]
    phases = [phase_row("before the kill", [d for d in decisions if d["time"] < killed], hop_s),
              phase_row("broker away", [d for d in decisions if killed <= d["time"] < restarted], hop_s),
              phase_row("after its return", [d for d in decisions if d["time"] >= restarted], hop_s)]
    written = [json.loads(line) for line in events_file.read_text().splitlines()]
    received = [(arrived, json.loads(payload)) for arrived, topic, payload in subscriber.messages
                if topic == "avcil/bench/event"]
    keys = [(e["label"], e["start"]) for _, e in received]
    kept = [int(line.split("; ")[1].split()[0]) for line in back_lines]  # "...; N events kept meanwhile sent"
    events = {"in the run's --events file": len(written),
              "arrived at the subscriber": len(set(keys)),
              "missing": len({(e["label"], e["start"]) for e in written} - set(keys)),
              "duplicates": len(keys) - len(set(keys)),
              "arrived before the kill": sum(a < killed for a, _ in received),
              "arrived while the broker was away": sum(killed <= a < restarted for a, _ in received),
              "arrived after its return": sum(a >= restarted for a, _ in received),
              "of which kept while it was away (the run's count)": sum(kept)}
    # The commands as written down: the clip list and the scratch folder by name, not by this machine's paths.
    def shown(text: str) -> str:
        for path, name in ((files, "CLIPS"), (" ".join(args.clips), "CLIP..."), (str(work), "SCRATCH"),
                           (sys.executable, "python3")):
            text = text.replace(path, name)
        return text

    script = (f"python3 benchmarks/mqtt_outage.py --model {args.model} --clips CLIP... --duration {args.duration:g} "
              f"--kill-at {args.kill_at:g} --down-for {args.down_for:g}")
    result = {"note": args.note, "script": script,
              "command": shown(" ".join(command)), "hop_s": hop_s, "kill_after_first_decision_s": args.kill_at,
              "down_for_s": args.down_for, "reconnected_after_restart_s": None, "phases": phases, "events": events,
              "mqtt_lines": [line.strip() for line in stderr_lines if line.startswith("mqtt:")],
              "decisions": len(every), "first_decision_lateness_ms": every[0]["latency_ms"]["total"],
              "returncode": run.returncode}
    if back_lines:
        online = [a for a, topic, payload in subscriber.messages
                  if topic == "avcil/bench/availability" and payload == "online" and a >= restarted]
        result["reconnected_after_restart_s"] = round(min(online) - restarted, 2) if online else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def markdown(result: dict) -> str:
    lines = ["# A broker killed and restarted during `avcil run --mqtt`", "",
             f"`benchmarks/mqtt_outage.py`: the broker killed {result['kill_after_first_decision_s']:.0f} s after the "
             f"first decision, started again {result['down_for_s']:.0f} s later; hop {result['hop_s']} s. The "
             f"publisher was connected again {result['reconnected_after_restart_s']} s after the restart "
             f"(paho's back-off). {result['note']}".rstrip(), "",
             "| phase | decisions | lateness p50 (ms) | lateness max (ms) | later than a hop | longest gap between "
             "decisions (s) |", "|---|---|---|---|---|---|"]
    for row in result["phases"]:
        lines.append(f"| {row['phase']} | {row['decisions']} | {row['lateness_p50_ms']} | {row['lateness_max_ms']} | "
                     f"{row['late_by_more_than_a_hop']} | {row['longest_gap_s']} |")
    lines += ["", f"Lateness: from a window's end to its decision (`latency_ms.total`); the first decision, which "
                  f"also warms the encoders up ({result['first_decision_lateness_ms']:.0f} ms), is left out.", "",
              "| events | count |", "|---|---|"]
    lines += [f"| {name} | {count} |" for name, count in result["events"].items()]
    lines += ["", "What the run said:", "", "```", *result["mqtt_lines"], "```", "",
              f"Ran: `{result['script']}`, which runs `{result['command']}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
