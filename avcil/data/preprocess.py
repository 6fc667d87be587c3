"""Numpy preprocessing between decoded media and the encoders: resampling, spectrograms, frame sampling.

Everything here runs outside the exported encoder graphs, so that the same code feeds the PyTorch modules, ONNX
Runtime and TensorRT. Each audio/visual preprocessing is a frozen settings object: `to_dict()` is what manifests
and feature stores record, `*_from_settings(dict)` rebuilds it from there (the runtime needs nothing else).

Audio preprocessings:
- `KaldiFbank`: Kaldi-compatible log-mel fbank as AudioMAE computes it (torchaudio's Kaldi fbank), padded or
  cropped to a fixed number of frames, with the sample rate and the AudioMAE input normalisation as explicit
  settings (docs/method.md#the-paper-encoders).
- `SfxMel`: the 96-band log-mel spectrogram of the aiSFX sound-effects CNN (44.1 kHz, 2048/1024), as its Essentia
  pipeline computes it, over a fixed window.
- `SfxSpeech`: the lite profile's input, `SfxMel` and the same window at 16 kHz (for the speech embedding) packed
  in one vector.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from avcil.errors import InvalidInput

log = logging.getLogger(__name__)

# AudioMAE's published input statistics (its AudioSet fbank mean and std).
AUDIOMAE_NORM_MEAN = -4.2677393
AUDIOMAE_NORM_STD = 4.5689974


def _read_only(array: np.ndarray) -> np.ndarray:
    """Cached filter banks are shared between calls: nobody may write into them."""
    array.flags.writeable = False
    return array


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling (Kaiser-windowed sinc, scipy) of a mono float waveform.

    The ratio is exact for the usual rates (44.1/48/16 kHz, 11,430 Hz); a rate pair whose exact ratio needs more
    than 4096 polyphase branches is approximated to the nearest such ratio (an error far below 0.1 %).
    """
    if from_rate <= 0 or to_rate <= 0:
        raise InvalidInput(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    waveform = np.asarray(waveform, dtype=np.float32)
    if from_rate == to_rate:
        return waveform
    from scipy.signal import resample_poly  # scipy.signal takes a second to import: only when resampling

    ratio = Fraction(to_rate, from_rate).limit_denominator(4096)
    return resample_poly(waveform, ratio.numerator, ratio.denominator,
                         window=antialias_filter(ratio.numerator, ratio.denominator)).astype(np.float32)


@lru_cache(maxsize=8)
def antialias_filter(up: int, down: int) -> np.ndarray:
    """The low-pass filter that scipy's resample_poly designs for a reduced ratio up/down at its defaults (a Kaiser
    window, beta 5, ten zero crossings a side at the lower rate), in float32 as it applies it to float32 audio.

    Designed once per ratio rather than in every call: the live path resamples each 0.78 s speech window on its
    own, and designing the filter took 60 % of that. The samples are the same, bit for bit."""
    from scipy.signal import firwin

    widest = max(up, down)
    return _read_only(firwin(2 * 10 * widest + 1, 1.0 / widest, window=("kaiser", 5.0)).astype(np.float32))


def as_mono(waveform: np.ndarray, what: str = "waveform") -> np.ndarray:
    """A 1-D float32 waveform; a [samples, channels] array is averaged over channels."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1)
    if waveform.ndim != 1:
        raise InvalidInput(f"{what}: expected a mono waveform [samples] or [samples, channels], got {waveform.shape}")
    return waveform


def fit_length(array: np.ndarray, length: int, centre: bool) -> np.ndarray:
    """Zero-pad or crop `array` along axis 0 to `length`: at the end, or evenly on both sides when `centre`."""
    have = array.shape[0]
    if have >= length:
        start = (have - length) // 2 if centre else 0
        return array[start:start + length]
    before = (length - have) // 2 if centre else 0
    pad = [(before, length - have - before)] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, pad)


@lru_cache(maxsize=8)
def kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> np.ndarray:
    """Kaldi's triangular mel filters [num_bins, fft_size // 2] (mel = 1127 ln(1 + f / 700); high_freq <= 0 counts
    back from Nyquist). A band too narrow to hold an FFT bin stays all zero, as in torchaudio's Kaldi fbank (Kaldi
    itself refuses it), so that 128 bins at 16 kHz behave as AudioMAE's features did."""

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    delta = (mel(high) - mel(low_freq)) / (num_bins + 1)
    left = mel(low_freq) + np.arange(num_bins)[:, None] * delta
    centre, right = left + delta, left + 2 * delta
    bin_mel = mel(np.arange(fft_size // 2) * sample_rate / fft_size)[None, :]
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    return _read_only(np.maximum(0.0, np.minimum(rising, falling)))


@dataclass(frozen=True)
class KaldiFbank:
    """Kaldi fbank as torchaudio.compliance.kaldi.fbank computes it for AudioMAE, in [1, frames, mel_bins].

    Kaldi defaults kept: pre-emphasis 0.97, DC offset removed per frame, FFT size rounded up to a power of two,
    snip_edges, mel bands from 20 Hz to Nyquist, log of the power mel energies floored at float32 epsilon; no
    dither, no energy (so htk_compat changes nothing). Frames past the clip are zeros in the log domain and a longer
    clip keeps its first `target_frames`, as AudioMAE's dataset code does. Checked against kaldi-native-fbank in
    the tests; computed in numpy because kaldi-native-fbank refuses mel bands that hold no FFT bin (128 bins at
    16 kHz), which AudioMAE's torchaudio features had.
    """

    sample_rate: int
    normalize: bool  # AudioMAE's (x - mean) / (2 * std); the paper's extraction skipped it
    num_mel_bins: int = 128
    target_frames: int = 1024
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window: str = "hanning"
    preemphasis: float = 0.97
    low_freq: float = 20.0
    norm_mean: float = AUDIOMAE_NORM_MEAN
    norm_std: float = AUDIOMAE_NORM_STD
    kind: str = field(default="kaldi_fbank", init=False)

    def __post_init__(self) -> None:
        if self.window != "hanning":
            raise InvalidInput(f"KaldiFbank supports the 'hanning' window (AudioMAE's), got {self.window!r}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.target_frames, self.num_mel_bins)

    @property
    def window_seconds(self) -> float:
        """The clip length the encoder sees, as SfxMel states its own: the paper profile's 1024 frames, 10.24 s."""
        return self.target_frames * self.frame_shift_ms / 1000.0

    def fbank(self, waveform: np.ndarray) -> np.ndarray:
        """Log-mel fbank [frames, mel_bins] of a mono waveform at `sample_rate`, before padding/normalising."""
        waveform = as_mono(waveform).astype(np.float64)
        # AudioMAE removes the clip's mean before the fbank (on top of Kaldi's per-frame DC removal).
        waveform = waveform - waveform.mean() if waveform.size else waveform
        size = int(self.sample_rate * self.frame_length_ms * 0.001)
        shift = int(self.sample_rate * self.frame_shift_ms * 0.001)
        if len(waveform) < size:
            return np.zeros((0, self.num_mel_bins), dtype=np.float32)
        count = 1 + (len(waveform) - size) // shift
        frames = waveform[np.arange(count)[:, None] * shift + np.arange(size)[None, :]]
        frames = frames - frames.mean(axis=1, keepdims=True)
        # Kaldi's pre-emphasis treats the sample before each frame as a copy of its first sample.
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = (frames - self.preemphasis * previous) * np.hanning(size)
        fft_size = 1 << (size - 1).bit_length()
        power = np.abs(np.fft.rfft(frames, n=fft_size, axis=1)) ** 2
        banks = kaldi_mel_banks(self.num_mel_bins, fft_size, self.sample_rate, self.low_freq)
        energies = power[:, : fft_size // 2] @ banks.T
        return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)

    def __call__(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        frames = fit_length(self.fbank(resample(as_mono(waveform), sample_rate, self.sample_rate)),
                            self.target_frames, centre=False)
        if self.normalize:
            frames = (frames - self.norm_mean) / (2 * self.norm_std)
        return frames[None].astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=8)
def essentia_mel_filterbank(sample_rate: float, fft_size: int, num_bands: int, f_min: float,
                            f_max: float) -> np.ndarray:
    """Essentia's MelBands filters [num_bands, fft_size // 2 + 1]: htkMel warping, triangles weighted in mel,
    each band normalised to unit sum (the settings aiSFX's spectrogram used)."""

    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    edges_mel = np.linspace(hz2mel(f_min), hz2mel(f_max), num_bands + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    bins = fft_size // 2 + 1
    bin_freqs = np.arange(bins) * (sample_rate / 2.0) / (bins - 1)
    bin_mel = hz2mel(bin_freqs)
    filters = np.zeros((num_bands, bins))
    for i in range(num_bands):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        rising = (bin_freqs >= lo) & (bin_freqs < mid)
        falling = (bin_freqs >= mid) & (bin_freqs <= hi)
        filters[i, rising] = (bin_mel[rising] - hz2mel(lo)) / (hz2mel(mid) - hz2mel(lo))
        filters[i, falling] = (hz2mel(hi) - bin_mel[falling]) / (hz2mel(hi) - hz2mel(mid))
        total = filters[i].sum()
        if total <= 0:
            raise InvalidInput(f"mel band {i} ({lo:.1f}-{hi:.1f} Hz) covers no FFT bin: use fewer bands or a larger FFT")
        filters[i] /= total
    return _read_only(filters)


@dataclass(frozen=True)
class SfxMel:
    """aiSFX's input: 96-band power mel spectrogram, log10(1e4 x + 1), min-max scaled with its training range,
    in [frames, mel_bands] over a fixed window of `window_seconds` (shorter clips are centred in silence, longer
    ones keep their middle). Frames are cut as Essentia's FrameCutter cuts them; checked once against Essentia
    2.1b6 (equal within 2e-6), which is not a dependency."""

    window_seconds: float = 3.0
    sample_rate: int = 44100
    fft_size: int = 2048
    hop: int = 1024
    mel_bands: int = 96
    f_min: float = 0.0
    f_max: float = 22050.0
    scale_max: float = 9.457798957824707  # aiSFX's 'original' normalisation: (spec - 0) / (max - 0)
    kind: str = field(default="sfx_mel", init=False)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.frame_count(self.window_samples), self.mel_bands)

    def frame_count(self, samples: int) -> int:
        """Frames Essentia's FrameCutter cuts: centred on 0, hop, 2 hop, ... while a frame starts before the end."""
        return -(-(samples + self.fft_size // 2) // self.hop)

    def spectrogram(self, waveform: np.ndarray) -> np.ndarray:
        """Scaled log-mel [frames, mel_bands] of a mono waveform at `sample_rate`, any length."""
        waveform = as_mono(waveform).astype(np.float64)
        half, frames = self.fft_size // 2, self.frame_count(len(waveform))
        padded = np.pad(waveform, (half, (frames - 1) * self.hop + self.fft_size - half - len(waveform)))
        starts = np.arange(frames) * self.hop
        blocks = padded[starts[:, None] + np.arange(self.fft_size)[None, :]]
        # Essentia's Hann is the symmetric one; its Spectrum is the plain FFT magnitude.
        power = np.abs(np.fft.rfft(blocks * np.hanning(self.fft_size), axis=1)) ** 2
        filters = essentia_mel_filterbank(self.sample_rate, self.fft_size, self.mel_bands, self.f_min, self.f_max)
        mel = power @ filters.T
        return (np.log10(1e4 * mel + 1.0) / self.scale_max).astype(np.float32)

    def __call__(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        window = fit_length(resample(as_mono(waveform), sample_rate, self.sample_rate), self.window_samples,
                            centre=True)
        return self.spectrogram(window)

    def to_dict(self) -> dict:
        return asdict(self)


# Google's speech embedding (avcil.model.encoders.speech) at 16 kHz: mel frames every 160 samples (10 ms), one
# embedding window of 76 of them (a 512-sample STFT frame plus 75 hops: 0.78 s), a window every 8 frames (80 ms).
# Stated here, below the encoder and the live stream (avcil.runtime.speech_stream) that both cut these windows.
SPEECH_FRAME_HOP = 160
SPEECH_WINDOW_FRAMES = 76
SPEECH_WINDOW_HOP_FRAMES = 8
SPEECH_WINDOW_SAMPLES = 512 + (SPEECH_WINDOW_FRAMES - 1) * SPEECH_FRAME_HOP
SPEECH_WINDOW_HOP_SAMPLES = SPEECH_WINDOW_HOP_FRAMES * SPEECH_FRAME_HOP
_warned_short: set[str] = set()


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned_short:
        _warned_short.add(key)
        log.warning(message, *args)


@dataclass(frozen=True)
class SfxSpeech(SfxMel):
    """The lite audio input: two views of one window packed in one float32 vector [sfx_size + speech_samples],
    so that the audio encoder stays one graph with one input (extraction, export and every backend take it as
    they take any audio input). First aiSFX's scaled log-mel spectrogram [frames, mel_bands] (SfxMel) flattened,
    then the window's waveform at `speech_rate` in [-1, 1] (the speech embedding's input), centred like the
    spectrogram. A window shorter than one speech-embedding window (0.78 s) still gets one: it is padded with
    silence, and a warning says so once."""

    speech_rate: int = 16000
    kind: str = field(default="sfx_speech", init=False)

    @property
    def sfx_shape(self) -> tuple[int, int]:
        return SfxMel.input_shape.fget(self)

    @property
    def speech_samples(self) -> int:
        return max(int(round(self.window_seconds * self.speech_rate)), SPEECH_WINDOW_SAMPLES)

    @property
    def input_shape(self) -> tuple[int, ...]:
        frames, bands = self.sfx_shape
        return (frames * bands + self.speech_samples,)

    def sfx_input(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Only the spectrogram part [frames, mel_bands] (a live stream embeds the speech part as it arrives)."""
        return SfxMel.__call__(self, waveform, sample_rate)

    def __call__(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        mono = as_mono(waveform)
        if len(mono) < SPEECH_WINDOW_SAMPLES * sample_rate / self.speech_rate:
            _warn_once("short", "audio of %.2f s is shorter than one speech-embedding window (%.2f s): padded with "
                       "silence (said once)", len(mono) / sample_rate, SPEECH_WINDOW_SAMPLES / self.speech_rate)
        return self.pack(self.sfx_input(mono, sample_rate), self.speech_input(mono, sample_rate))

    def speech_input(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Only the speech part [speech_samples]: the window at `speech_rate`, centred."""
        at_rate = resample(as_mono(waveform), sample_rate, self.speech_rate)
        return fit_length(at_rate, self.speech_samples, centre=True).astype(np.float32)

    def pack(self, spectrogram: np.ndarray, speech: np.ndarray) -> np.ndarray:
        """The packed input [sfx_size + speech_samples] from its two parts (`sfx_input`, `speech_input`)."""
        return np.concatenate([spectrogram.ravel(), speech]).astype(np.float32)


AudioPreprocess = KaldiFbank | SfxMel | SfxSpeech
_AUDIO_KINDS = {"kaldi_fbank": KaldiFbank, "sfx_mel": SfxMel, "sfx_speech": SfxSpeech}


def audio_preprocess_from_settings(settings: dict) -> AudioPreprocess:
    """Rebuild an audio preprocessing from its `to_dict()` (a manifest's or a feature store's record)."""
    kind = settings.get("kind")
    if kind not in _AUDIO_KINDS:
        raise InvalidInput(f"unknown audio preprocessing kind {kind!r}; expected one of {sorted(_AUDIO_KINDS)}")
    return _AUDIO_KINDS[kind](**{k: v for k, v in settings.items() if k != "kind"})


def sample_frame_indices(num_frames_in_clip: int, count: int) -> list[int]:
    """`count` frame indices spread uniformly over the clip, the first and the last frame included.

    A clip shorter than `count` frames repeats frames; `count == 1` takes the middle frame.
    """
    if num_frames_in_clip < 1:
        raise InvalidInput(f"cannot sample frames from a clip of {num_frames_in_clip} frames")
    if count < 1:
        raise InvalidInput(f"frame count must be at least 1, got {count}")
    if count == 1:
        return [(num_frames_in_clip - 1) // 2]
    return [int(i) for i in np.round(np.linspace(0, num_frames_in_clip - 1, count))]


def resize_centre_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the short side is `size` (area filter down, bilinear up), then crop the centre square."""
    height, width = frame.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top:top + size, left:left + size]


@dataclass(frozen=True)
class FramePreprocess:
    """`count` RGB frames -> float32 [count, 3, size, size]: short side resized to `size`, centre crop, scaled to
    [0, 1], then (x - mean) / std per channel."""

    count: int
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kind: str = field(default="frames", init=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.count, 3, self.size, self.size)

    def black_frames(self) -> list[np.ndarray]:
        """What an unlit camera shows: `count` black RGB frames, what stands in where no frame came."""
        return [np.zeros((self.size, self.size, 3), np.uint8)] * self.count

    def __call__(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        if len(frames) != self.count:
            raise InvalidInput(f"expected {self.count} frames (sample them with sample_frame_indices), got {len(frames)}")
        out = np.empty(self.input_shape, dtype=np.float32)
        for i, frame in enumerate(frames):
            out[i] = self.frame(frame, f"frame {i}")
        return out

    def frame(self, frame: np.ndarray, what: str = "frame") -> np.ndarray:
        """One RGB uint8 frame [H, W, 3] -> float32 [3, size, size]."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InvalidInput(f"{what}: expected an RGB uint8 image [H, W, 3], got {frame.dtype} {frame.shape}")
        square = resize_centre_crop(frame, self.size).astype(np.float32) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((square - mean) / std).transpose(2, 0, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def frame_preprocess_from_settings(settings: dict) -> FramePreprocess:
    """Rebuild a frame preprocessing from its `to_dict()`."""
    if settings.get("kind") != "frames":
        raise InvalidInput(f"unknown visual preprocessing kind {settings.get('kind')!r}; expected 'frames'")
    return FramePreprocess(count=int(settings["count"]), size=int(settings["size"]),
                           mean=tuple(settings["mean"]), std=tuple(settings["std"]))
