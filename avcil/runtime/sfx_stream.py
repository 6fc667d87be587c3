"""The lite sound-event CNN (aiSFX) on a live stream: the part of it that a window's end cannot change runs while
the recognizer waits for the end, so that after the end only the part near the end is left.

aiSFX (avcil.model.encoders.lite) is four blocks of 3 x 3 convolutions over the window's log-mel spectrogram (3 s:
131 frames x 96 bands), the first three max-pooled 2 x 2, then averaged over frequency into one column of 512 per 8
frames and max-pooled over its 16 columns. A column depends on the frames within about 30 of its own 8 and on
nothing else, so (measured on the network itself, tests/test_sfx_stream.py):
- run on a window's first F frames (F a multiple of 8), its columns before F / 8 - EDGE_COLUMNS are the whole
  window's, whatever follows;
- run on the frames from S on (S a multiple of 8) to the window's end, its columns from S / 8 + EDGE_COLUMNS on are.
The stream runs the head (the first `head_frames`, whose audio is in about 0.2 s before the end) as soon as its
audio is in, and after the end the tail from `tail_start` on: 75 of the 131 frames, 57 % of the network, for the
same vector. The max over the head's and the tail's columns is the whole window's vector wherever the window holds
the samples the head was run on (the ring's sample index of its first sample says so); otherwise the window is run
whole.

The floor is the tail: its columns near the end see the window's zero padding, and their 30 frames of context
take every block of the network to compute.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from avcil.data.preprocess import SfxMel, resample

COLUMN_FRAMES = 8  # spectrogram frames per column: three 2 x 2 max-pools
EDGE_COLUMNS = 4  # columns at a cut that its padding changes (their frames' context crosses it)
LEAD_FRAMES = 11  # the head leaves at least this many frames (0.26 s at aiSFX's hop) for after the end
MARGIN_S = 0.05  # audio after the head resampled with it, so that resampling's edge falls outside it


class SfxStream:
    """aiSFX's vector of a decision window from its head (run before the end) and its tail (after).
    `columns_encoder`: a backend of the profile's 'audio_sfx_columns' graph; `prep`: the audio preprocessing."""

    def __init__(self, columns_encoder, prep: SfxMel):
        self.encoder, self.prep = columns_encoder, prep
        self.frames = prep.frame_count(prep.window_samples)
        self.head_frames = COLUMN_FRAMES * ((self.frames - LEAD_FRAMES) // COLUMN_FRAMES)
        self.head_columns = self.head_frames // COLUMN_FRAMES - EDGE_COLUMNS
        self.tail_start = (self.head_columns - EDGE_COLUMNS) * COLUMN_FRAMES
        # Frame k spans the window's samples [(k - 1) hop, (k + 1) hop) (SfxMel.spectrogram, fft = 2 hops).
        self.head_seconds = self.head_frames * prep.hop / prep.sample_rate
        self.heads: OrderedDict[int, np.ndarray] = OrderedDict()  # ring index of a window's first sample -> max
        self.tried: set[int] = set()
        encoder_input = np.zeros((1, self.frames - self.tail_start, prep.mel_bands), np.float32)
        self.encoder(encoder_input)  # the runtime's first-call set-up, before the first window

    def forget(self) -> None:
        """Drop every head: a new stream starts, whose ring counts its samples from 0 again."""
        self.heads.clear()
        self.tried.clear()

    @staticmethod
    def supports(prep) -> bool:
        """Whether a window is long enough for a head and a tail (aiSFX's 3 s window: 131 frames)."""
        if not isinstance(prep, SfxMel) or prep.fft_size != 2 * prep.hop:
            return False
        return prep.frame_count(prep.window_samples) - LEAD_FRAMES >= 2 * EDGE_COLUMNS * COLUMN_FRAMES + COLUMN_FRAMES

    def encode_ready(self, ring, start: float) -> bool:
        """Run the head of the window that starts at clock time `start` once the ring holds its audio (and a
        margin), once; returns whether it ran now."""
        key = int(round(start * 1e4))
        if key in self.tried or not ring.covers(start + self.head_seconds + MARGIN_S):
            return False
        self.tried.add(key)
        # A whole number of the ring's samples, so that the head's first sample is the window's (AudioRing.cut).
        seconds = int(np.ceil((self.head_seconds + MARGIN_S) * ring.rate)) / ring.rate
        samples, first = ring.cut(start + seconds, seconds)  # the ring covers it: `first` is an index
        spectrogram = self.prep.spectrogram(resample(samples, ring.rate, self.prep.sample_rate))
        columns, = self.encoder(np.ascontiguousarray(spectrogram[None, :self.head_frames]))
        self.heads[first] = columns[:, :self.head_columns].max(axis=1)
        while len(self.heads) > 3:  # the windows in flight, at most
            self.heads.popitem(last=False)
        if len(self.tried) > 64:
            self.tried = {k for k in self.tried if k >= key - int(1e4 * 10)}
        return True

    def has_head(self, first_sample: int | None) -> bool:
        """Whether the head of the window starting at ring index `first_sample` has run."""
        return first_sample is not None and first_sample in self.heads

    def spectrogram(self, waveform: np.ndarray, rate: int, first_sample: int | None) -> np.ndarray:
        """What `vector` needs of the window whose `waveform` is at `rate` and starts at ring index `first_sample`
        [1, frames, bands]: where its head ran, the frames from `tail_start` on, computed from the samples they
        reach only when the waveform is at aiSFX's rate (a frame spans the samples within one hop of its centre:
        the same numbers); else every frame."""
        at_rate = rate == self.prep.sample_rate and len(waveform) == self.prep.window_samples
        if self.has_head(first_sample) and at_rate:
            return self.prep.spectrogram(waveform[(self.tail_start - 1) * self.prep.hop:])[None, 1:]
        return SfxMel.__call__(self.prep, waveform, rate)[None]

    def vector(self, spectrogram: np.ndarray, first_sample: int | None) -> tuple[np.ndarray, int]:
        """aiSFX's vector [1, 512] of the window whose `spectrogram` (`spectrogram`: every frame, or the tail's
        where its head ran) is [1, frames, bands] and whose waveform starts at ring index `first_sample` (None: not
        from a ring); and how many frames were run for it here."""
        if not self.has_head(first_sample):
            columns, = self.encoder(spectrogram)
            return columns.max(axis=1), self.frames
        tail_frames = self.frames - self.tail_start
        tail = spectrogram if spectrogram.shape[1] == tail_frames else spectrogram[:, self.tail_start:]
        tail, = self.encoder(np.ascontiguousarray(tail))
        return np.maximum(self.heads[first_sample], tail[:, EDGE_COLUMNS:].max(axis=1)), self.frames - self.tail_start
