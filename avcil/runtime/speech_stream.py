"""The lite audio encoder on a live stream: its speech-embedding windows (0.78 s, one every 80 ms) are embedded
one by one as their audio arrives, while the recognizer waits for the decision window to end, so that after the
end only aiSFX (its tail, avcil.runtime.sfx_stream) and the newest window or two are left to run.

Embedding the 28 windows of a 3-second window after its end took as long as aiSFX itself (about 100 ms in ONNX
Runtime on two busy cores, against 1.3 ms for one window): done as the audio arrives, the decision latency keeps
only aiSFX's. Each window depends on its own samples only (`SpeechWindowEmbedding`), so that a window embedded from
the stream is what the whole-window encoder computes, up to the resampling at the window's edges. Windows sit at
the decision window's start + k x 80 ms; consecutive decision windows share them when the hop is a multiple of
80 ms (`snap_hop`), otherwise fewer are reused and more are embedded after the end.

Replay (avcil.runtime.replay) does not wait, so every window of a replayed window is embedded after its end, cut
from the window's own 16 kHz resampling as extraction cuts them (one resampling rather than 28). Where windows do not
overlap (the demo replays one clip a window) nothing is kept for the next one, and the profile's whole audio graph
runs instead, as extraction runs it: 54 ms rather than 71 ms for aiSFX and 28 speech windows apart.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from avcil.errors import InvalidInput
from avcil.data.preprocess import SPEECH_WINDOW_HOP_SAMPLES, SfxSpeech, fit_length, resample
from avcil.model.encoders.lite import SoundAndSpeechEncoder
from avcil.runtime.sfx_stream import SfxStream

# Speech windows embedded in one call from this many (a replayed window's 12 or 28; live, as they arrive, one or two:
# ONNX Runtime took 47-50 ms for 28 in one call against 60 ms one by one on two cores).
BATCH_FROM = 8
MARGIN_S = 0.05  # audio on each side of a window resampled with it, so that resampling's edges fall outside it


def snap_hop(hop: float, prep: SfxSpeech) -> float:
    """The nearest hop (at least one) that is a whole number of speech-window hops, so that windows repeat."""
    step = SPEECH_WINDOW_HOP_SAMPLES / prep.speech_rate
    return max(1, round(hop / step)) * step


class SpeechStream:
    """Speech-window embeddings keyed by their clock time, and the audio vector of a decision window from them.
    `sfx_encoder`, `window_encoder`: backends of the profile's 'audio_sfx' and 'speech_window' graphs;
    `sfx_columns`: of its 'audio_sfx_columns' graph, to run aiSFX's head before the window ends
    (avcil.runtime.sfx_stream; None, as in an export made before it: aiSFX runs whole after the end);
    `whole_encoder`: of its 'audio' graph (the packed window, as extraction encodes it), for a window of which
    nothing was encoded before."""

    def __init__(self, sfx_encoder, window_encoder, prep: SfxSpeech, sfx_columns=None, whole_encoder=None):
        if not self.supports(prep):
            raise InvalidInput(f"{prep}: not a sound + speech audio preprocessing whose window holds its speech windows")
        self.sfx_encoder, self.window_encoder, self.prep = sfx_encoder, window_encoder, prep
        self.whole_encoder = whole_encoder
        self.sfx = SfxStream(sfx_columns, prep) if sfx_columns is not None and SfxStream.supports(prep) else None
        self.window_samples = window_encoder.input_shapes[0][0]
        self.count = 1 + (prep.speech_samples - self.window_samples) // SPEECH_WINDOW_HOP_SAMPLES
        self.hop_s = SPEECH_WINDOW_HOP_SAMPLES / prep.speech_rate
        self.window_s = self.window_samples / prep.speech_rate
        self.embeddings: OrderedDict[int, np.ndarray] = OrderedDict()
        self.keep = 3 * self.count
        self.last_end: float | None = None  # the clock time at which the last window decided ended
        # Run both once, so that the first window's stream does not pay for the runtimes' first-call set-up; and the
        # resampler, whose first call imports scipy.signal (1.6 s here).
        window_encoder(np.zeros((1, self.window_samples), np.float32))
        sfx_encoder(np.zeros((1, *prep.sfx_shape), np.float32))
        resample(np.zeros(1024, np.float32), 44100, prep.speech_rate)

    def forget(self) -> None:
        """Drop every embedding and aiSFX head: a new stream starts (Recognizer.start_stream)."""
        self.embeddings.clear()
        self.last_end = None
        if self.sfx is not None:
            self.sfx.forget()

    @staticmethod
    def supports(prep) -> bool:
        # A window shorter than one speech window is padded by the preprocessing: nothing to stream then.
        return isinstance(prep, SfxSpeech) and prep.speech_samples == round(prep.window_seconds * prep.speech_rate)

    def positions(self, start: float) -> np.ndarray:
        """Clock times at which the speech windows of the decision window starting at `start` begin."""
        return start + np.arange(self.count) * self.hop_s

    @staticmethod
    def _key(position: float) -> int:
        return int(round(position * 1e4))  # 0.1 ms: equal positions of two windows give one key

    def _embed(self, positions: list[float], windows: list[np.ndarray]) -> None:
        """Embed windows from their samples at the speech rate."""
        if len(windows) >= BATCH_FROM:  # a replayed window's, all at once: a fifth less time than one by one
            embeddings, = self.window_encoder(np.stack(windows))
        else:
            # Live, one or two windows a call: one input shape, which torch on a CPU would otherwise plan again per
            # batch size.
            embeddings = np.concatenate([self.window_encoder(window[None])[0] for window in windows])
        for position, embedding in zip(positions, embeddings):
            self.embeddings[self._key(position)] = embedding

    def encode_ready(self, ring, start: float) -> int:
        """Embed the windows of the decision window starting at `start` whose audio (and margin) the ring holds
        and that are not embedded yet, and run aiSFX's head once its audio is in; returns how many windows were
        embedded (the head counts as one)."""
        head = int(self.sfx.encode_ready(ring, start)) if self.sfx is not None else 0
        ready = [p for p in self.positions(start) if self._key(p) not in self.embeddings
                 and ring.covers(p + self.window_s + MARGIN_S)]
        if not ready:
            return head
        # The span they cover with a margin of real audio on both sides, resampled once (`_cut_windows`).
        span_start, span_end = ready[0] - MARGIN_S, ready[-1] + self.window_s + MARGIN_S
        span = ring.window(span_end, span_end - span_start)
        self._embed(ready, self._cut_windows(span, ring.rate, span_start, ready))
        return head + len(ready)

    def sfx_input(self, waveform: np.ndarray, rate: int, first_sample: int | None) -> np.ndarray:
        """aiSFX's input for `audio_features` [1, frames, bands]: the tail's frames where its head ran
        (SfxStream.spectrogram), else the whole window's."""
        if self.sfx is not None:
            return self.sfx.spectrogram(waveform, rate, first_sample)
        return self.prep.sfx_input(waveform, rate)[None]

    def _cut_windows(self, waveform: np.ndarray, rate: int, start: float, positions: list[float]) -> list[np.ndarray]:
        """The speech windows at `positions` (clock times, in order) within `waveform` at `rate`, which starts at
        clock time `start`: one resampling of the span they cover, with MARGIN_S of its audio before it where
        there is any, so that the resampling's edges fall outside them (a decision window's, as extraction
        resamples it whole; a span of the ring with margins on both sides, as the audio arrives)."""
        offsets = [int(round((p - start) * rate)) for p in positions]
        begin = max(0, offsets[0] - int(round(MARGIN_S * rate)))
        at_rate = resample(waveform[begin:], rate, self.prep.speech_rate)
        cuts = [int(round((o - begin) * self.prep.speech_rate / rate)) for o in offsets]
        return [fit_length(at_rate[c:c + self.window_samples], self.window_samples, centre=False) for c in cuts]

    def audio_features(self, spectrogram: np.ndarray, waveform: np.ndarray, rate: int, start: float,
                       first_sample: int | None = None) -> tuple[np.ndarray, int, int]:
        """The audio vector [1, audio_dim] of the decision window (`waveform` at `rate`, starting at clock time
        `start` and at ring index `first_sample`): aiSFX on its `spectrogram` [1, frames, bands]
        (`SfxSpeech.sfx_input`), or on its tail where its head ran before, and its speech windows, embedding from
        `waveform` those that are not embedded yet. Returns the vector, how many windows were embedded here and
        how many spectrogram frames aiSFX ran on here."""
        positions = self.positions(start)
        missing = [k for k, p in enumerate(positions) if self._key(p) not in self.embeddings]
        head_ran = self.sfx is not None and self.sfx.has_head(first_sample)
        apart = self.last_end is None or start >= self.last_end - 1e-6  # shares no audio with the window before
        self.last_end = start + self.prep.window_seconds
        if self.whole_encoder is not None and apart and len(missing) == self.count and not head_ran:
            # Nothing of this window was encoded before, and windows do not overlap (a replay at a hop of a window,
            # as the demo's one clip a window; a stream's first window), so nothing of it is kept for the next:
            # the whole graph in one call, as extraction runs it (ONNX Runtime on two cores: 54 ms, against 71 ms
            # for aiSFX and the 28 speech windows apart).
            vector, = self.whole_encoder(self.prep.pack(spectrogram[0], self.prep.speech_input(waveform, rate))[None])
            return vector, len(missing), spectrogram.shape[1]
        if missing:
            ready = [positions[k] for k in missing]
            self._embed(ready, self._cut_windows(waveform, rate, start, ready))
        windows = np.stack([self.embeddings[self._key(p)] for p in positions])[None]
        if self.sfx is not None:
            sfx, sfx_frames = self.sfx.vector(spectrogram, first_sample)
        else:
            (sfx,), sfx_frames = self.sfx_encoder(spectrogram), spectrogram.shape[1]
        while len(self.embeddings) > self.keep:
            self.embeddings.popitem(last=False)
        return SoundAndSpeechEncoder.combine(sfx, windows), len(missing), sfx_frames
