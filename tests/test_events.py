"""Events from decisions (avcil.runtime.events): hysteresis on hand-made decision sequences, and `avcil run --events`
on paced files."""

import json

import pytest

from avcil.errors import InvalidInput
from avcil.runtime.events import EventRelay, EventTracker
from support.commands import avcil


def decisions(labels: str, scores=None) -> list[dict]:
    """One decision per character: '.' is unknown, a letter a class; window i spans [i, i + 3] seconds."""
    return [{"label": "unknown" if c == "." else c, "score": (scores or {}).get(i, 0.5), "window": [i, i + 3.0],
             "model_version": "v0001"} for i, c in enumerate(labels)]


def track(labels: str, start: int, end: int, scores=None) -> list[dict]:
    tracker = EventTracker(start, end)
    events = [e for d in decisions(labels, scores) for e in tracker.feed(d)]
    return events + tracker.close()


def test_an_event_opens_after_n_windows_and_closes_after_m_others():
    # "a" twice in a row opens (n=2); one unknown does not close (m=2), two do; a lone "b" never opens.
    events = track("..aa.aa..b..", 2, 2, scores={5: 0.9})
    assert [(e["label"], e["start"], e["end"], e["windows"]) for e in events] == [("a", 2.0, 9.0, 4)]
    assert events[0]["peak_score"] == 0.9 and events[0]["opened_at"] == 6.0 and events[0]["model_version"] == "v0001"
    # With n=1 every labelled run opens; with m=1 the gap splits the "a" event in two.
    assert [(e["label"], e["start"], e["end"]) for e in track("..aa.aa..b..", 1, 1)] == [
        ("a", 2.0, 6.0), ("a", 5.0, 9.0), ("b", 9.0, 12.0)]


def test_another_label_that_opens_closes_the_open_event_and_the_run_end_closes_the_last():
    events = track("aaabbb", 2, 3)
    assert [(e["label"], e["start"], e["end"]) for e in events] == [("a", 0.0, 5.0), ("b", 3.0, 8.0)]
    # Alternating labels open nothing at n=2, and "b" windows between "a"s count as misses of "a".
    assert track("abab", 2, 1) == []
    assert [(e["label"], e["windows"]) for e in track("aabaa", 2, 2)] == [("a", 4)]


def test_decisions_with_their_wall_clock_time_give_events_wall_clock_start_and_end():
    # Window i ends at i + 3 on the sources' clock; its decision is made 50 ms later, at wall clock 1000 + i + 3.05.
    timed = [{**d, "time": 1000 + d["window"][1] + 0.05, "latency_ms": {"total": 50.0}} for d in decisions("..aaa..")]
    tracker = EventTracker(2, 2)
    events = [e for d in timed for e in tracker.feed(d)] + tracker.close()
    assert [(e["start"], e["end"], e["start_time"], e["end_time"]) for e in events] == [(2.0, 7.0, 1002.0, 1007.0)]
    assert "start_time" not in track("..aaa..", 2, 2)[0]  # hand-made decisions without `time`: none


class Outlet:
    """An EventOutlet that notes what it is given."""

    def __init__(self):
        self.calls = []

    def event(self, event):
        self.calls.append(("event", event["label"]))

    def ongoing(self, event):
        self.calls.append(("ongoing", event and event["label"]))

    def close(self):
        self.calls.append(("close", None))


def test_the_relay_tracks_once_and_tells_every_outlet_what_closed_and_what_is_under_way():
    outlets = [Outlet(), Outlet()]
    relay = EventRelay(EventTracker(1, 2), outlets)
    for d in decisions("aa..bba."):
        relay(d)
    relay.close()
    # a opens; two misses close it (none under way); b opens; an a closes b and opens a; the end closes a.
    expected = [("ongoing", "a"), ("event", "a"), ("ongoing", None), ("ongoing", "b"), ("event", "b"),
                ("ongoing", "a"), ("event", "a"), ("ongoing", None), ("close", None)]
    assert outlets[0].calls == outlets[1].calls == expected


@pytest.mark.parametrize("start, end", [(0, 1), (1, 0), (1.5, 2)])
def test_settings_below_one_window_are_refused(start, end):
    with pytest.raises(InvalidInput, match="whole number of windows"):
        EventTracker(start, end)


def test_run_writes_one_event_per_clip_held_over_its_windows(toy_model, toy_clips, tmp_path):
    files = ",".join(str(p) for p in [toy_clips["red"][4], toy_clips["blue"][4]])
    events_file = tmp_path / "events.jsonl"
    avcil("run", "--model", toy_model, "--camera", files, "--mic", files, "--slot", "2.5", "--hop", "0.5",
          "--smoothing", "1", "--score", "softmax", "--threshold", "0", "--events", events_file,
          "--event-start", "2", "--event-end", "2", "--quiet")
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [e["label"] for e in events] == ["red", "blue"]
    assert all(e["windows"] >= 2 and e["start"] < e["opened_at"] <= e["end"] and 0 <= e["peak_score"] <= 1
               for e in events)
    assert events[0]["end"] <= events[1]["start"] + 1.28 + 1e-6  # at most one window's overlap between the two


def test_run_refuses_an_event_setting_below_one_in_one_line(toy_model, tmp_path):
    refused = avcil("run", "--model", toy_model, "--camera", "x.mp4", "--mic", "x.mp4", "--events",
                    tmp_path / "e.jsonl", "--event-start", "0", check=False)
    assert refused.returncode == 2 and "--event-start" in refused.stderr and "Traceback" not in refused.stderr
