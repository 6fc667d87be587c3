"""The learning job: what the page shows of a change to the model it asked for, one at a time, and the refusals a
request meets while one is under way."""

from __future__ import annotations

import threading
import time

from avcil.errors import InvalidInput


class LearnJob:
    """What the page shows of a change to the model that it asked for (adding a class, "not X"): state idle |
    recording | learning | loading | live | failed, the recording step (see field.record_from), a message, the
    version committed. One at a time."""

    UNDER_WAY = ("recording", "learning", "loading")

    def __init__(self):
        self.lock = threading.Lock()
        self.state: dict = {"state": "idle", "id": 0}
        self.doing = ""  # what is under way, for the refusal of another

    def update(self, **fields) -> None:
        with self.lock:
            self.state = {**self.state, **fields, "updated": round(time.time(), 3)}

    def begin(self, label: str, state: str, message: str, doing: str, **fields) -> int:
        """Start a new job in `state` (its number), or Busy while one is under way. `doing`: what it is, as in
        "class 'x' is being learnt"."""
        with self.lock:
            if self.state["state"] in self.UNDER_WAY:
                raise Busy(f"{self.doing}; wait until it is done")
            number, self.doing = self.state["id"] + 1, doing
            self.state = {"state": state, "id": number, "label": label, "message": message, "version": None,
                          **fields, "updated": round(time.time(), 3)}
            return number

    @property
    def busy(self) -> bool:
        with self.lock:
            return self.state["state"] in self.UNDER_WAY

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.state)


class Busy(InvalidInput):
    """A request that conflicts with work under way (answered 409)."""


class Gone(InvalidInput):
    """A request for a decision or an event the device no longer keeps (answered 404)."""

