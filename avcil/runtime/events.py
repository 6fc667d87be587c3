"""Events from decisions: "the doorbell, from 12:03:01 to 12:03:05", not one line per window.

    tracker = EventTracker()                 # hysteresis: START_WINDOWS to open, END_WINDOWS to close
    for decision in decisions:
        for event in tracker.feed(decision):  # the events this decision closed
            ...
    events = tracker.close()                 # the event still open when the run ends

A label opens an event after `start_windows` consecutive windows labelled it (not `unknown`); the event ends after
`end_windows` consecutive windows that are not labelled it, at the end of its last window labelled it. One event is
open at a time: another label that opens closes the open one first. Each event: `label`, `start` (the start of its
first window), `end`, `peak_score` (the highest decision score among its windows), `windows` (how many were labelled
it), `opened_at` (the end of the window that opened it: when a listener could first know) and `model_version` (of
its first window). Times are the decisions' `window` times: the sources' monotonic
clock, the same as the decision lines'. The defaults are measured by `avcil bench stream` (docs/decision.md#events).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from avcil.errors import InvalidInput
from avcil.runtime.decision import UNKNOWN

# Chosen on the stream benchmark's val streams: the fewest false events per hour among the settings whose event
# recall is within EVENT_RECALL_SLACK of the best (benchmarks/results/stream-av-digits-lite.md).
START_WINDOWS = 1
END_WINDOWS = 2


@dataclass
class EventTracker:
    start_windows: int = START_WINDOWS
    end_windows: int = END_WINDOWS
    _candidate: list = field(default_factory=list, init=False, repr=False)  # windows of a label not yet open
    _open: dict | None = field(default=None, init=False, repr=False)
    _misses: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("start_windows", "end_windows"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InvalidInput(f"{name.replace('_', '-')} must be a whole number of windows >= 1, got {value}")

    def feed(self, decision: dict) -> list[dict]:
        """Take one decision (its `label`, `score`, `window`, `model_version`); return the events it closed."""
        label, closed = decision["label"], []
        if self._open is not None:
            if label == self._open["label"]:
                self._extend(decision)
                self._candidate = []
                return closed
            self._misses += 1
            if self._misses >= self.end_windows:
                closed.append(self._close_open())
        if label == UNKNOWN or (self._open is not None and label == self._open["label"]):
            self._candidate = []
            return closed
        if not self._candidate or self._candidate[-1]["label"] != label:
            self._candidate = []
        self._candidate.append(decision)
        if len(self._candidate) >= self.start_windows:
            if self._open is not None:
                closed.append(self._close_open())
            first, *rest = self._candidate
            self._open = {"label": label, "start": first["window"][0], "end": first["window"][1],
                          "peak_score": first["score"], "windows": 1, "opened_at": decision["window"][1],
                          "model_version": first.get("model_version")}
            for later in rest:
                self._extend(later)
            self._candidate = []
        return closed

    def close(self) -> list[dict]:
        """The event still open, closed now (the end of the run)."""
        self._candidate = []
        return [self._close_open()] if self._open is not None else []

    def _extend(self, decision: dict) -> None:
        event = self._open
        event.update(end=decision["window"][1], peak_score=max(event["peak_score"], decision["score"]),
                     windows=event["windows"] + 1)
        self._misses = 0

    def _close_open(self) -> dict:
        event, self._open, self._misses = self._open, None, 0
        return event


class EventWriter:
    """Decisions in, event lines out (`avcil run --events FILE`): one JSON line per event, flushed as it closes."""

    def __init__(self, path: str | Path, tracker: EventTracker | None = None):
        self.path = Path(path)
        self.file = open(self.path, "a")
        self.tracker = tracker or EventTracker()

    def __call__(self, decision: dict) -> None:
        self._write(self.tracker.feed(decision))

    def close(self) -> None:
        self._write(self.tracker.close())
        self.file.close()

    def _write(self, events: list[dict]) -> None:
        for event in events:
            self.file.write(json.dumps(event) + "\n")
        if events:
            self.file.flush()
