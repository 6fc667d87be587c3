"""Visual tokens of a live stream, frame by frame, for a visual encoder that encodes each frame on its own (the
lite profile's CNN, `EncoderProfile.frames_independent`).

A window's frames are sampled across it, so all but the newest have been taken before the window ends, and
consecutive windows may share frames. Encoding each frame once, as soon as it is final (while the recognizer waits
for the window to end), leaves at most the newest frame to encode after the end, and mostly not even that: the
frame history keeps one frame per 0.19 s, so a frame kept in the window's last 0.19 s is the one its last time takes
(avcil.runtime.windows.WindowAssembler.settled_times). The decision latency loses the visual encoder's time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from avcil.errors import InvalidInput
from avcil.data.preprocess import FramePreprocess
from avcil.model.graphs import FRAME_AXIS


class FrameTokens:
    """Tokens [S, Dv] per frame, keyed by the frame's clock stamp (FrameHistory.sample_stamped), for the last
    `keep` frames encoded."""

    def __init__(self, encoder, frame_prep: FramePreprocess, keep: int | None = None):
        if not self.supports(encoder):
            raise InvalidInput(f"{encoder}: its visual graph takes a fixed number of frames, not one at a time")
        self.encoder, self.frame_prep = encoder, frame_prep
        self.keep = keep or 4 * frame_prep.count  # a window's frames and those of the windows around it
        self.tokens: OrderedDict[float, np.ndarray] = OrderedDict()

    @staticmethod
    def supports(encoder) -> bool:
        """Whether a backend takes any number of frames (its frame axis is free)."""
        return encoder.input_shapes[0][FRAME_AXIS - 1] is None  # input_shapes leave the batch out

    def forget(self) -> None:
        """Drop every token: a new stream starts, whose frames' stamps may repeat an earlier one's."""
        self.tokens.clear()

    def prepare(self, stamped: Sequence[tuple[float, np.ndarray]]) -> tuple[list[float], np.ndarray]:
        """The stamps of the frames not encoded yet (each once) and their preprocessed pixels [1, n, 3, H, W]."""
        pending = {stamp: frame for stamp, frame in stamped if stamp not in self.tokens}
        pixels = np.stack([self.frame_prep.frame(f) for f in pending.values()])[None] if pending else None
        return list(pending), pixels

    def encode(self, prepared: tuple[list[float], np.ndarray | None]) -> int:
        """Encode prepared frames into the cache; returns how many were encoded."""
        stamps, pixels = prepared
        if not stamps:
            return 0
        tokens, = self.encoder(pixels)
        self.tokens.update(zip(stamps, tokens[0]))
        return len(stamps)

    def window(self, stamps: Sequence[float]) -> np.ndarray:
        """The window's tokens [1, T, S, Dv] from encoded frames; the oldest frames beyond `keep` are dropped
        afterwards (stamps only grow, so the insertion order is the age order)."""
        missing = [s for s in stamps if s not in self.tokens]
        if missing:
            raise KeyError(f"frames at {missing} were not encoded (prepare and encode them first)")
        tokens = np.stack([self.tokens[s] for s in stamps])[None]
        while len(self.tokens) > self.keep:
            self.tokens.popitem(last=False)
        return tokens
