"""The stream benchmark's measures (avcil.bench.stream) on streams whose answers are known by construction."""

import numpy as np

from avcil.bench.stream_metrics import StreamWindows, choose_threshold, event_metrics, smooth
from avcil.runtime.decision import DecisionRule

# One stream, 20 s: digit "1" from 4 s to 6 s, digit "2" from 12 s to 14 s, background elsewhere. Windows of 3 s
# every second, ending at 3, 4, ..., 20 s.
STREAM = {"events": [{"label": "1", "start": 4.0, "end": 6.0}, {"label": "2", "start": 12.0, "end": 14.0}],
          "background": [{"start": 0.0, "end": 4.0}, {"start": 6.0, "end": 12.0}, {"start": 14.0, "end": 20.0}]}
ENDS = np.arange(3.0, 21.0)


def windows() -> StreamWindows:
    per_stream = [{"ends": ENDS, "seconds": 3.0, "inputs": np.zeros((len(ENDS), 4), np.float32)}]
    return StreamWindows({"streams": [STREAM]}, None, per_stream, ["1", "2"])


def labels(**at_end) -> np.ndarray:
    """Unknown (-1) everywhere but the windows ending at the given seconds (e1=0 labels the window ending at 1 s)."""
    out = np.full(len(ENDS), -1)
    for key, label in at_end.items():
        out[np.flatnonzero(ENDS == float(key[1:]))] = label
    return out


def test_windows_are_event_or_background_by_their_overlap():
    w = windows().streams[0]
    # Windows holding >= 1 s of "1" (4-6 s) end at 5..8 s; background windows hold no event at all.
    assert list(ENDS[w["event_of"] == 0]) == [5.0, 6.0, 7.0, 8.0]
    assert list(ENDS[w["background"]]) == [3.0, 4.0, 9.0, 10.0, 11.0, 12.0, 17.0, 18.0, 19.0, 20.0]
    assert abs(windows().background_hours - 16.0 / 3600) < 1e-9


def test_recall_wrong_labels_false_accept_runs_and_delay():
    # "1" found by the window ending at 6 s (2 s after it starts), also called "2" at 7 s; "2" missed; background
    # labelled at 9-10 s (one run) and at 18 s (another).
    m = event_metrics(windows(), [labels(e6=0, e7=1, e9=1, e10=1, e18=0)])
    assert m["events"] == 2 and m["event_recall"] == 0.5 and m["wrong_class_share"] == 0.5
    assert m["false_accepts"] == 2 and abs(m["false_accepts_per_hour"] - 2 / (16.0 / 3600)) < 1e-6
    assert m["delay_s_median"] == 2.0 and m["per_class"]["2"]["event_recall"] == 0.0
    assert event_metrics(windows(), [labels()])["false_accepts"] == 0


def test_the_threshold_has_the_fewest_false_accepts_at_the_target_recall_or_at_most_of_the_reachable():
    curve = [{"threshold": 0.1, "event_recall": 0.95, "false_accepts_per_hour": 50.0},
             {"threshold": 0.2, "event_recall": 0.91, "false_accepts_per_hour": 5.0},
             {"threshold": 0.3, "event_recall": 0.80, "false_accepts_per_hour": 0.0}]
    assert choose_threshold(curve) == 0.2
    # 90 % is out of reach: the fewest false accepts at >= 90 % of the best recall (0.72 of 0.8), not the lowest
    # threshold with all its false accepts.
    short = [{"threshold": 0.1, "event_recall": 0.80, "false_accepts_per_hour": 500.0},
             {"threshold": 0.2, "event_recall": 0.75, "false_accepts_per_hour": 30.0},
             {"threshold": 0.3, "event_recall": 0.70, "false_accepts_per_hour": 3.0}]
    assert choose_threshold(short) == 0.2


def test_smoothing_is_the_recognizers_running_mean():
    rng = np.random.default_rng(0)
    ranking, scores = rng.random((12, 3)), rng.normal(size=12)
    rule = DecisionRule("max_logit", threshold=-10.0, smoothing=3)
    live = [rule(r, s, ["a", "b", "c"])["score"] for r, s in zip(ranking, scores)]
    assert np.allclose(smooth(scores, 3), live, atol=1e-4)


def test_events_tracked_over_the_windows_are_matched_to_the_streams_events():
    from avcil.bench.stream import tracked_event_metrics

    # "1" labelled at the windows ending at 6 and 7 s (one event over 3-7 s: finds "1"), "1" again at 18 s (over
    # 15-18 s: no event of the stream there, a false event); "2" never labelled.
    labelled = labels(e6=0, e7=0, e18=0)
    scores = np.where(labelled >= 0, 0.9, 0.1)
    m = tracked_event_metrics(windows(), [labelled], [scores], 1, 1)
    assert (m["events"], m["event_recall"], m["false_events"], m["wrong_class_share"]) == (2, 0.5, 1, 0.0)
    assert m["delay_s_median"] == 2.0  # opened by the window ending at 6 s, 2 s after the event's start
    # Two windows needed to open: the lone window at 18 s opens nothing.
    assert tracked_event_metrics(windows(), [labelled], [scores], 2, 1)["false_events"] == 0


def test_window_accuracy_counts_every_event_window_and_those_holding_the_whole_event():
    from avcil.bench.stream_metrics import window_accuracy

    # Event windows of "1" (4-6 s) end at 5-8 s, of "2" (12-14 s) at 13-16 s; those ending at 6-7 s and 14-15 s hold
    # the whole event. Right: 6 and 7 ("1" whole), 13 ("2" partial); the rest wrong or unknown.
    best = labels(e5=1, e6=0, e7=0, e8=1, e13=1, e14=0, e15=0)
    accuracy = window_accuracy(windows(), [best])
    assert accuracy["event_windows"] == {"windows": 8, "accuracy": 3 / 8}
    assert accuracy["whole_event_windows"] == {"windows": 4, "accuracy": 2 / 4}
