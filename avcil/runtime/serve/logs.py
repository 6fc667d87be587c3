"""What the page's service keeps of recognition: the recent decisions (DecisionLog), their windows' encoder
features for "not X" (WindowFeatures) and the recent events (EventLog), each bounded and locked, since the
recognition thread writes them while the server's threads read them."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

import numpy as np

KEPT_DECISIONS = 600  # what /api/decisions can return: minutes of decisions at a few a second
# The encoder features of the recent windows, for "not X": at most KEPT_DECISIONS windows and this many bytes. A lite
# window is 704 audio + 8 x 49 x 320 visual floats (493 KiB): the last 133 windows, two minutes at its 0.96 s hop.
# The tiny profile's (1.1 KiB) are kept for all KEPT_DECISIONS.
KEPT_FEATURE_BYTES = 64 * 2**20
KEPT_EVENTS = 200  # what /api/detections can return: the recent events (an hour's worth at a few a minute)


class DecisionLog:
    """The recent decisions, numbered from 1 in the order they were made."""

    def __init__(self, keep: int = KEPT_DECISIONS):
        self.kept: deque[dict] = deque(maxlen=keep)
        self.count = 0
        self.lock = threading.Lock()

    def add(self, decision: dict) -> int:
        """Keep `decision`; its number."""
        with self.lock:
            self.count += 1
            self.kept.append({"n": self.count, **decision})
            return self.count

    def after(self, n: int, limit: int = 200) -> list[dict]:
        with self.lock:
            return [d for d in self.kept if d["n"] > n][-limit:]

    def get(self, n: int) -> dict | None:
        """Decision `n`, while it is kept."""
        with self.lock:
            index = self._index(n)
            return None if index is None else self.kept[index]

    def within(self, start: float, end: float) -> list[dict]:
        """The kept decisions whose windows lie within [start, end] (an event's span, on the sources' clock)."""
        with self.lock:
            return [d for d in self.kept if start <= d["window"][0] and d["window"][1] <= end]

    def mark(self, numbers: list[int], **fields) -> None:
        """Add `fields` to the kept decisions numbered `numbers`. As new dicts: the decisions' stream may be
        serialising the old ones meanwhile."""
        with self.lock:
            for n in numbers:
                index = self._index(n)
                if index is not None:
                    self.kept[index] = {**self.kept[index], **fields}

    def _index(self, n: int) -> int | None:
        """Where decision `n` is in `kept` (numbers are consecutive), or None."""
        first = self.count - len(self.kept) + 1
        return n - first if first <= n <= self.count else None

    def latest(self) -> dict | None:
        with self.lock:
            return self.kept[-1] if self.kept else None


class EventLog:
    """The page's outlet of events (avcil.runtime.events.EventOutlet): the recent ones, numbered from 1 as they
    closed, and the one under way."""

    def __init__(self, keep: int = KEPT_EVENTS):
        self.kept: deque[dict] = deque(maxlen=keep)
        self.count = 0
        self.open: dict | None = None
        self.lock = threading.Lock()

    def event(self, event: dict) -> None:
        with self.lock:
            self.count += 1
            self.kept.append({"n": self.count, **event})

    def ongoing(self, event: dict | None) -> None:
        with self.lock:
            self.open = event

    def close(self) -> None:
        pass

    def get(self, n: int) -> dict | None:
        """Event `n`, while it is kept."""
        with self.lock:
            return next((e for e in self.kept if e["n"] == n), None)

    def after(self, n: int, limit: int = 100) -> dict:
        """The events numbered after `n` (the newest `limit`), the one under way, and the last number."""
        with self.lock:
            return {"detections": [e for e in self.kept if e["n"] > n][-limit:], "ongoing": self.open,
                    "last": self.count}


class WindowFeatures:
    """The encoder features of the recent decisions' windows (audio [1, Da], visual [1, T, S, Dv]) by decision
    number: what "not X" learns from. The newest KEPT_DECISIONS at most, and no more than KEPT_FEATURE_BYTES
    together; the oldest go first."""

    def __init__(self, keep: int = KEPT_DECISIONS, budget: int = KEPT_FEATURE_BYTES):
        self.kept: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.keep, self.budget, self.bytes = keep, budget, 0
        self.lock = threading.Lock()

    def add(self, n: int, audio: np.ndarray, visual: np.ndarray) -> None:
        # Copies: whether a backend's output array stays its own after the next window is the backend's business.
        rows = (np.array(audio), np.array(visual))
        with self.lock:
            self.kept[n] = rows
            self.bytes += rows[0].nbytes + rows[1].nbytes
            while len(self.kept) > self.keep or (self.bytes > self.budget and len(self.kept) > 1):
                audio, visual = self.kept.popitem(last=False)[1]
                self.bytes -= audio.nbytes + visual.nbytes

    def rows(self, numbers: list[int]) -> tuple[list[int], np.ndarray | None, np.ndarray | None]:
        """The kept ones among `numbers`, with their features one row each: (numbers, audio, visual)."""
        with self.lock:
            found = [n for n in numbers if n in self.kept]
            if not found:
                return [], None, None
            return found, *(np.concatenate([self.kept[n][part] for n in found]) for part in (0, 1))

    @property
    def oldest(self) -> int | None:
        with self.lock:
            return next(iter(self.kept), None)

