"""Events from decisions: "the doorbell, from 12:03:01 to 12:03:05", not one line per window.

    tracker = EventTracker()                 # hysteresis: START_WINDOWS to open, END_WINDOWS to close
    for decision in decisions:
        for event in tracker.feed(decision):  # the events this decision closed
            ...
    events = tracker.close()                 # the event still open when the run ends

    relay = EventRelay(tracker, [EventFile(path), publisher, page_log])   # one tracker, every outlet
    relay(decision) ... relay.close()

A label opens an event after `start_windows` consecutive windows labelled it (not `unknown`); the event ends after
`end_windows` consecutive windows that are not labelled it, at the end of its last window labelled it. One event is
open at a time: another label that opens closes the open one first. Each event: `label`, `start` (the start of its
first window), `end`, `peak_score` (the highest decision score among its windows), `windows` (how many were labelled
it), `opened_at` (the end of the window that opened it: when a listener could first know) and `model_version` (of
its first window). Times are the decisions' `window` times: the sources' monotonic
clock, the same as the decision lines'. Where the decisions carry their wall-clock `time` (those of `avcil run` and
`avcil serve` do), the event also has `start_time` and `end_time`: `start` and `end` on the wall clock (Unix
seconds), for a page or a home-automation system that shows when it happened. The defaults are measured by
`avcil bench stream` (docs/decision.md#events).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

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
    _wall_offset: float | None = field(default=None, init=False, repr=False)  # wall clock minus the sources' clock

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
            self._wall_offset = _wall_offset(decision)
            for later in rest:
                self._extend(later)
            self._candidate = []
        return closed

    @property
    def open_event(self) -> dict | None:
        """The event open now (a copy, with its times so far), or None."""
        return self._with_wall_times(dict(self._open)) if self._open is not None else None

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
        event, self._open, self._misses = self._with_wall_times(self._open), None, 0
        return event

    def _with_wall_times(self, event: dict) -> dict:
        if self._wall_offset is not None:
            event.update(start_time=round(event["start"] + self._wall_offset, 3),
                         end_time=round(event["end"] + self._wall_offset, 3))
        return event


def _wall_offset(decision: dict) -> float | None:
    """Wall clock minus the sources' clock, from a decision made `latency_ms.total` after its window ended at
    wall-clock `time`; None for a decision without its `time`. Taken once per event: the two clocks drift apart by
    far less than a window over an event's seconds."""
    if "time" not in decision:
        return None
    latency_s = (decision.get("latency_ms") or {}).get("total", 0.0) / 1000
    return decision["time"] - latency_s - decision["window"][1]


class EventOutlet(Protocol):
    """Where events go (a file, an MQTT broker, the device's page)."""

    def event(self, event: dict) -> None:
        """An event, closed."""

    def ongoing(self, event: dict | None) -> None:
        """The open event changed: one opened (a copy of it), or the last one closed and none is open (None)."""

    def close(self) -> None:
        """The run ended; the last event was given already."""


class EventRelay:
    """Decisions in, events out to every outlet: the events are tracked once, whichever outlets take them."""

    def __init__(self, tracker: EventTracker, outlets: list[EventOutlet]):
        self.tracker, self.outlets = tracker, outlets

    def __call__(self, decision: dict) -> None:
        was_open = self.tracker.open_event
        self._send(self.tracker.feed(decision), was_open)

    def close(self) -> None:
        """Close the event still open (the end of the run), give it out, then close every outlet."""
        was_open = self.tracker.open_event
        try:
            self._send(self.tracker.close(), was_open)
        finally:
            for outlet in self.outlets:
                outlet.close()

    def _send(self, closed: list[dict], was_open: dict | None) -> None:
        for event in closed:
            for outlet in self.outlets:
                outlet.event(event)
        now_open = self.tracker.open_event
        if _identity(now_open) != _identity(was_open):
            for outlet in self.outlets:
                outlet.ongoing(now_open)


def _identity(event: dict | None) -> tuple | None:
    """What tells one open event from the next: its label and first window (its end and peak move as it goes)."""
    return None if event is None else (event["label"], event["start"])


class EventFile:
    """`avcil run --events FILE`: one JSON line per event, appended and flushed as it closes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open(self.path, "a")

    def event(self, event: dict) -> None:
        self.file.write(json.dumps(event) + "\n")
        self.file.flush()

    def ongoing(self, event: dict | None) -> None:
        pass  # the file holds finished events only

    def close(self) -> None:
        self.file.close()
