"""The stream benchmark with one modality missing: a microphone gone (the audio removed) or a camera dark (the video
removed), part of `avcil bench stream`.

The streams' windows are those of the stream benchmark, with the missing modality's columns of the readout inputs
replaced by what the live path feeds in its place (silence for a microphone that went away, black frames for a camera
that did): the encoders give the same features for every such window, so they are encoded once. Two ways to decide
each window are measured at the default rule:
- `stand-in`: the audio-visual readout, as every model decided before it kept per-modality readouts;
- `alone`: the readout of the modality that is left (AnalyticReadout.part), as `avcil run` decides now.
Besides recall, false accepts per hour and wrong-class events at the default threshold, each row gives the recall at
no more false accepts per hour than the audio-visual model has with both modalities (the best threshold on its test
curve), and that recall as a share of the audio-visual recall (the issue's target for video alone: 70 %).
"""

from __future__ import annotations

import copy

import numpy as np

from avcil.bench.report import markdown_table
from avcil.bench.stream_metrics import (DEFAULT_RULE, DEFAULT_THRESHOLD, StreamWindows, event_metrics, rule_scores,
                                        sweep)
from avcil.runtime.decision import HeadScores

LEFT = {"audio": "video", "video": "audio"}  # the missing modality -> the one left


def stand_in_columns(head, profile) -> dict[str, np.ndarray]:
    """Per modality, its columns of the readout inputs of a window in which it is missing: silence for the audio,
    black frames for the video, as the live path feeds them (avcil.runtime.recognizer)."""
    from avcil.runtime.class_space import readout_inputs_of
    from avcil.runtime.windows import window_seconds

    rate = profile.audio_prep.sample_rate
    silence = np.zeros(int(round(window_seconds(profile.audio_prep) * rate)), np.float32)
    audio, visual = profile.encode_batch(*(x[None] for x in profile.clip_inputs(silence, rate,
                                                                                  profile.frame_prep.black_frames())))
    inputs = readout_inputs_of(head, audio, visual)[0].numpy()
    return {name: inputs[first:end] for name, (first, end) in head.readout.columns.items()}


def with_inputs(windows: StreamWindows, change) -> StreamWindows:
    """A copy of `windows` whose streams' readout inputs are `change(inputs)`."""
    changed = copy.copy(windows)
    changed.streams = [{**stream, "inputs": change(stream["inputs"])} for stream in windows.streams]
    return changed


def missing_modality_rows(head, profile, test: StreamWindows, both: dict) -> list[dict]:
    """The rows described in the module's docstring, on the test streams; `both`: the default row with both
    modalities (its event recall and false accepts per hour)."""
    readout = head.readout
    if not readout.columns:
        return []
    stand_ins = stand_in_columns(head, profile)
    scorer, rows = HeadScores(head), []
    for missing, left in LEFT.items():
        first, end = readout.columns[missing]

        def replaced(inputs: np.ndarray) -> np.ndarray:
            inputs = inputs.copy()
            inputs[:, first:end] = stand_ins[missing]
            return inputs

        kept_first, kept_end = readout.columns[left]
        ways = {"stand-in": (scorer, with_inputs(test, replaced))}
        if scorer.decides_alone(left):
            ways["alone"] = (scorer.alone[left], with_inputs(test, lambda x: x[:, kept_first:kept_end]))
        for way, (scores, windows) in ways.items():
            scored = rule_scores(scores, windows, DEFAULT_RULE)
            metrics = event_metrics(windows, [np.where(s >= DEFAULT_THRESHOLD, l, -1) for l, s in scored])
            curve = sweep(windows, scored, points=200)
            matched = max((p["event_recall"] for p in curve
                           if p["false_accepts_per_hour"] <= both["false_accepts_per_hour"] + 1e-9), default=0.0)
            rows.append({"missing": missing, "decided_by": f"{left} alone" if way == "alone" else
                         f"audio-visual, {'silence' if missing == 'audio' else 'black frames'} for the {missing}",
                         "way": way, **{k: metrics[k] for k in ("event_recall", "false_accepts_per_hour",
                                                                "wrong_class_share", "delay_s_median")},
                         "recall_at_both_false_accepts": matched,
                         "share_of_both_recall": matched / max(both["event_recall"], 1e-9)})
    return rows


def missing_modality_table(rows: list[dict], both: dict) -> str:
    if not rows:
        return ""
    return ("\n\nOne modality missing, default rule, test streams (avcil/bench/missing_modality.py): the missing "
            "modality's features replaced by what the live path feeds in its place. 'at the same FA/h': the best "
            f"recall at no more than the {both['false_accepts_per_hour']:.1f} false accepts per hour the model has "
            f"with both (recall {both['event_recall']:.3f}).\n\n"
            + markdown_table(rows, [("missing", "missing"), ("decided_by", "decided by"),
                                    ("event_recall", "event recall"), ("false_accepts_per_hour", "false accepts / h"),
                                    ("wrong_class_share", "wrong-class events"),
                                    ("recall_at_both_false_accepts", "recall at the same FA/h"),
                                    ("share_of_both_recall", "share of both's recall")]))
