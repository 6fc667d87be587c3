"""`avcil bench mqtt`'s accounting, on made-up decisions and messages: which phase a decision or an arrival falls in,
the lateness per phase, the events that reached the subscriber, and the report and plot it writes. The measurement
itself needs a broker and a minute: `avcil bench mqtt` (benchmarks/results/mqtt-outage.md)."""

from __future__ import annotations

import json

from avcil.bench import mqtt_outage
from avcil.bench.mqtt_outage import Outage

OUTAGE = Outage(first=100.0, killed=120.0, restarted=130.0)


def decision(at: float, lateness: float) -> dict:
    return {"time": at, "window": [at - 3.0, at - 0.2], "latency_ms": {"total": lateness}}


def test_phases_split_decisions_at_the_kill_and_the_restart():
    decisions = [decision(100 + i, 150.0 + i) for i in range(40)]  # one a second, 100 .. 139
    decisions[5]["latency_ms"]["total"] = 1500.0  # later than a hop
    rows = mqtt_outage.phase_rows(decisions, OUTAGE, hop_s=mqtt_outage.median_hop(decisions))
    assert [r["phase"] for r in rows] == list(mqtt_outage.PHASES)
    assert [r["decisions"] for r in rows] == [20, 10, 10]
    assert rows[0]["late_by_more_than_a_hop"] == 1 and rows[0]["lateness_max_ms"] == 1500.0
    assert rows[1]["lateness_p50_ms"] == 174.5 and rows[1]["longest_gap_s"] == 1.0
    assert mqtt_outage.phase_row("none", [], 1.0)["lateness_p50_ms"] is None


def test_events_are_counted_by_arrival_and_by_key():
    written = [{"label": "3", "start": s} for s in (1.0, 2.0, 3.0)]
    received = [(110.0, written[0]), (131.0, written[1]), (131.5, written[1])]  # one twice, one never
    back = ["mqtt: the broker mqtt://127.0.0.1:1 is back after 15.0 s; 2 events kept meanwhile sent"]
    counts = mqtt_outage.event_counts(written, received, OUTAGE, back)
    assert counts["arrived at the subscriber"] == 2 and counts["missing"] == 1 and counts["duplicates"] == 1
    assert counts["arrived before the kill"] == 1 and counts["arrived while the broker was away"] == 0
    assert counts["arrived after its return"] == 2 and counts["of which kept while it was away (the run's count)"] == 2
    messages = [(125.0, "avcil/bench/availability", "online"), (135.0, "avcil/bench/availability", "online")]
    assert mqtt_outage.reconnected_after(messages, OUTAGE) == 5.0


def test_the_report_and_its_plot(tmp_path):
    from avcil.bench.report import write_report

    decisions = [decision(101 + i, 170.0) for i in range(30)]
    received = [(105.0, {"label": "1", "start": 1.0})]
    result = {"note": "", "script": "avcil bench mqtt ...", "command": "python3 -m avcil.cli run ...", "hop_s": 0.96,
              "kill_after_first_decision_s": 20.0, "down_for_s": 10.0, "reconnected_after_restart_s": 5.0,
              "phases": mqtt_outage.phase_rows(decisions, OUTAGE, 0.96),
              "events": mqtt_outage.event_counts([], received, OUTAGE, []), "mqtt_lines": ["mqtt: connected"],
              "decisions": 31, "first_decision_lateness_ms": 3000.0, "returncode": 0,
              "timeline": mqtt_outage.timeline(decisions, received, OUTAGE)}
    paths = write_report(tmp_path, "mqtt-outage", result, mqtt_outage.describe(result), "outage",
                         lambda path: mqtt_outage.plot(result, path))
    assert paths["plot"].stat().st_size > 0
    assert json.loads(paths["json"].read_text())["timeline"]["killed_s"] == 20.0
    assert "| broker away | 10 |" in paths["markdown"].read_text()
