"""`avcil bench mqtt`: a broker killed and restarted during `avcil run --mqtt` on paced files: how late the decisions
were before, during and after the outage, and which events reached a subscriber after the broker came back.

    avcil bench mqtt --model MODEL --clips A.mp4 B.mp4 ... [--duration 60] [--kill-at 20] [--down-for 10]
                     [--out-dir benchmarks/results]

The clips are played in turn, looped, as camera and microphone (`avcil run --camera A,B,.. --mic A,B,.. --loop`).
The broker (Debian's mosquitto, on a free port, without persistence; avcil/bench/mosquitto.py) is killed `--kill-at`
seconds after the first decision and started again `--down-for` seconds later. Writes mqtt-outage.{json,md,png}: the
plot is each decision's lateness over the run, the outage shaded and the events' arrivals at the subscriber marked.
A measurement, not a test: the README's "Events to Home Assistant" section cites its result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from avcil.bench.report import DEFAULT_DIR, percentiles, write_report

DEVICE_ID = "bench"  # the run's --mqtt-device-id: its topics are avcil/bench/...


@dataclass
class Outage:
    """Wall-clock instants of a run: its first decision, the broker's kill and its restart."""
    first: float
    killed: float
    restarted: float

    def phase(self, instant: float) -> str:
        return "before the kill" if instant < self.killed else (
            "broker away" if instant < self.restarted else "after its return")


PHASES = ("before the kill", "broker away", "after its return")


# The accounting (pure: tests/test_mqtt_outage.py) ----------------------------------------------------------------
def median_hop(decisions: list[dict]) -> float:
    ends = [d["window"][1] for d in decisions]
    return round(sorted(b - a for a, b in zip(ends, ends[1:]))[len(ends) // 2], 3)


def phase_row(name: str, decisions: list[dict], hop_s: float) -> dict:
    lateness = [d["latency_ms"]["total"] for d in decisions]
    gaps = [b["time"] - a["time"] for a, b in zip(decisions, decisions[1:])]
    return {"phase": name, "decisions": len(decisions),
            "lateness_p50_ms": percentiles(lateness, (50,), digits=1)["p50_ms"],
            "lateness_max_ms": round(max(lateness), 1) if lateness else None,
            "late_by_more_than_a_hop": sum(value > hop_s * 1000 for value in lateness),
            "longest_gap_s": round(max(gaps), 3) if gaps else None}


def phase_rows(decisions: list[dict], outage: Outage, hop_s: float) -> list[dict]:
    return [phase_row(name, [d for d in decisions if outage.phase(d["time"]) == name], hop_s) for name in PHASES]


def event_counts(written: list[dict], received: list[tuple[float, dict]], outage: Outage,
                 back_lines: list[str]) -> dict:
    """What the run wrote to --events against what reached the subscriber, and when; `back_lines`: the run's
    "... is back after S s; N events kept meanwhile sent" lines."""
    keys = [(e["label"], e["start"]) for _, e in received]
    arrivals = [outage.phase(arrived) for arrived, _ in received]
    return {"in the run's --events file": len(written),
            "arrived at the subscriber": len(set(keys)),
            "missing": len({(e["label"], e["start"]) for e in written} - set(keys)),
            "duplicates": len(keys) - len(set(keys)),
            "arrived before the kill": arrivals.count("before the kill"),
            "arrived while the broker was away": arrivals.count("broker away"),
            "arrived after its return": arrivals.count("after its return"),
            "of which kept while it was away (the run's count)":
                sum(int(line.split("; ")[1].split()[0]) for line in back_lines)}


def reconnected_after(messages: list[tuple[float, str, str]], outage: Outage) -> float | None:
    """Seconds from the broker's restart to the run's `online` availability message."""
    online = [a for a, topic, payload in messages
              if topic == f"avcil/{DEVICE_ID}/availability" and payload == "online" and a >= outage.restarted]
    return round(min(online) - outage.restarted, 2) if online else None


def timeline(decisions: list[dict], received: list[tuple[float, dict]], outage: Outage) -> dict:
    """The plot's data, in seconds from the first decision."""
    return {"killed_s": round(outage.killed - outage.first, 3),
            "restarted_s": round(outage.restarted - outage.first, 3),
            "decisions": [[round(d["time"] - outage.first, 3), d["latency_ms"]["total"]] for d in decisions],
            "event_arrivals_s": [round(arrived - outage.first, 3) for arrived, _ in received]}


# The run ---------------------------------------------------------------------------------------------------------
def run_command(args: argparse.Namespace, port: int, jsonl: Path, events_file: Path) -> list[str]:
    files = ",".join(args.clips)
    return [sys.executable, "-m", "avcil.cli", "run", "--model", args.model, "--camera", files, "--mic", files,
            "--loop", "--duration", str(args.duration), "--jsonl", str(jsonl), "--events", str(events_file),
            "--mqtt", f"mqtt://127.0.0.1:{port}", "--mqtt-device-id", DEVICE_ID, "--quiet"]


def run_through_outage(args: argparse.Namespace, broker, command: list[str], jsonl: Path) -> tuple:
    """Run `command`, kill the broker `--kill-at` s after its first decision, start it again `--down-for` s later;
    (the run's exit code, its stderr lines, the Outage)."""
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
    return run.returncode, stderr_lines, Outage(first, killed, restarted)


def shown(text: str, args: argparse.Namespace, scratch: Path) -> str:
    """The command as written down: the clip list and the scratch folder by name, not by this machine's paths."""
    for path, name in ((",".join(args.clips), "CLIPS"), (" ".join(args.clips), "CLIP..."), (str(scratch), "SCRATCH"),
                       (sys.executable, "python3")):
        text = text.replace(path, name)
    return text


def measure(args: argparse.Namespace, scratch: Path) -> dict:
    from avcil.bench.mosquitto import Broker, Subscriber, free_port

    broker = Broker(scratch, free_port())
    broker.start()
    subscriber = Subscriber(broker.port, f"avcil/{DEVICE_ID}/#")
    jsonl, events_file = scratch / "decisions.jsonl", scratch / "events.jsonl"
    command = run_command(args, broker.port, jsonl, events_file)
    try:
        returncode, stderr_lines, outage = run_through_outage(args, broker, command, jsonl)
        time.sleep(1.0)  # the last messages
    finally:
        subscriber.close()
        broker.close()
    every = [json.loads(line) for line in jsonl.read_text().splitlines()]
    decisions = every[1:]  # the first decision also warms the encoders up: not the network's doing
    back_lines = [line for line in stderr_lines if "is back" in line]
    received = [(arrived, json.loads(payload)) for arrived, topic, payload in subscriber.messages
                if topic == f"avcil/{DEVICE_ID}/event"]
    hop_s = median_hop(every)
    return {"note": args.note,
            "script": (f"avcil bench mqtt --model {args.model} --clips CLIP... --duration {args.duration:g} "
                       f"--kill-at {args.kill_at:g} --down-for {args.down_for:g}"),
            "command": shown(" ".join(command), args, scratch), "hop_s": hop_s,
            "kill_after_first_decision_s": args.kill_at, "down_for_s": args.down_for,
            "reconnected_after_restart_s": reconnected_after(subscriber.messages, outage) if back_lines else None,
            "phases": phase_rows(decisions, outage, hop_s),
            "events": event_counts([json.loads(line) for line in events_file.read_text().splitlines()], received,
                                   outage, back_lines),
            "mqtt_lines": [line.strip() for line in stderr_lines if line.startswith("mqtt:")],
            "decisions": len(every), "first_decision_lateness_ms": every[0]["latency_ms"]["total"],
            "returncode": returncode, "timeline": timeline(decisions, received, outage)}


# The report ------------------------------------------------------------------------------------------------------
def describe(result: dict) -> str:
    lines = [f"`avcil bench mqtt`: the broker killed {result['kill_after_first_decision_s']:.0f} s after the first "
             f"decision, started again {result['down_for_s']:.0f} s later; hop {result['hop_s']} s. The publisher was "
             f"connected again {result['reconnected_after_restart_s']} s after the restart (paho's back-off). "
             f"{result['note']}".rstrip(), "",
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


def plot(result: dict, path: Path) -> None:
    """Each decision's lateness over the run, the outage shaded, the events' arrivals at the subscriber marked."""
    from avcil.train.plots import plt

    line = result["timeline"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.axvspan(line["killed_s"], line["restarted_s"], color="0.85", label="broker away")
    ax.plot([t for t, _ in line["decisions"]], [ms for _, ms in line["decisions"]], ".-", label="decision lateness")
    ax.axhline(result["hop_s"] * 1000, color="0.5", linestyle="--", linewidth=1, label="one hop")
    for i, arrived in enumerate(line["event_arrivals_s"]):
        ax.axvline(arrived, color="tab:green", alpha=0.5, linewidth=1, label="event arrived" if i == 0 else None)
    ax.set(xlabel="seconds from the first decision", ylabel="lateness (ms)", ylim=(0, None),
           title="decisions and events through a broker outage")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("avcil bench mqtt: needs Debian's mosquitto (scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="mqtt-outage-"))
    try:
        result = measure(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = describe(result)
    write_report(args.out_dir, "mqtt-outage", result, text, "A broker killed and restarted during `avcil run --mqtt`",
                 lambda path: plot(result, path))
    print(text)
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model dir that `avcil run` decides with (its "
                        "latest version; it is only read)")
    parser.add_argument("--clips", nargs="+", required=True, metavar="F", help="video files with sound, played in "
                        "turn and looped as camera and microphone")
    parser.add_argument("--duration", type=float, default=60.0, metavar="S", help="seconds of recognition (default 60)")
    parser.add_argument("--kill-at", type=float, default=20.0, metavar="S", help="kill the broker this long after the "
                        "first decision (default 20)")
    parser.add_argument("--down-for", type=float, default=10.0, metavar="S", help="start it again this long after "
                        "(default 10)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DIR, help="where the JSON, markdown and plot go")
    parser.add_argument("--note", default="", help="what the model, the clips and the machine were, for the report")
