"""What a clip's own sound and pictures say about the recording, before any encoder sees it.

    signals = measure_signals(waveform, frames)     # the decoded clip: mono float waveform, RGB uint8 frames
    signal_faults(signals)                          # -> ["silent audio (peak -92 dBFS)", ...], [] for a good clip

Each check measures one way a recording goes wrong in the field, with a threshold set from what the measure means
physically (not fitted to a data set); docs/architecture.md#the-enrolment-gate lists them with what they were
checked against. On the 600 AV-Digits clips (real photographs, real and synthetic voices) none fires, and the
nearest clip to each threshold is 1.8 (sharpness) to 30 times (clipping) away from it.

- silent audio: the clip's loudest sample is below SILENT_DBFS. A muted or wrong input, or a file without sound.
- clipped audio: more than CLIPPED_FRACTION of the samples sit at the converter's ceiling (FULL_SCALE).
- dark camera: even the brightest part of the picture (its 99th luminance percentile) is below DARK_LUMA.
- frozen camera: most consecutive frames are the same picture (they differ by less than FROZEN_CHANGE).
- blurred camera: the picture's pixel-scale contrast is small against its overall contrast (SHARPNESS).

The pictures are judged at most ENCODER_SIDE pixels on their short side, the scale the encoders see them at: blur
that a downscale to the encoder's input removes does not matter to the model, and a camera's native resolution
should not change the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import cv2
import numpy as np

# A muted input reads digital zero (-inf dBFS) or dither (about -90 dBFS for 16 bits); a real microphone at a gain
# that puts speech near -20 dBFS keeps even a quiet room's noise above about -70 dBFS at its peaks. A clip whose
# loudest moment is 60 dB below full scale holds no sound to learn.
SILENT_DBFS = -60.0
# A sample within 0.09 dB of full scale is at the converter's ceiling (decoded AAC overshoots a little past it).
FULL_SCALE = 0.99
# Waveforms peak for instants: a clean clip normalised to full scale has a few samples there (AV-Digits so
# normalised: at most 0.013 % of them). A clipped one holds the ceiling for whole stretches: 6 dB of overdrive on
# AV-Digits speech puts 0.19 % or more there. 0.1 % is 1 ms of every second at full scale.
CLIPPED_FRACTION = 0.001
# Luminance is display-referred (Rec. 601 luma of the decoded RGB, 0-1); 0.10 there is about 1 % of the camera's
# full-scale light. A picture whose brightest 1 % is below that is a covered lens, an unlit room or a black feed;
# AV-Digits' darkest clip has its brightest 1 % at 0.38.
DARK_LUMA = 0.10
DARK_PERCENTILE = 99.0
# A live camera's sensor noise alone changes a frame by a level or more of 255 on average (AV-Digits' stillest step
# between frames: 1.2 levels); a repeated picture (a stalled stream, a still image) changes by the codec's rounding
# only, well under half a level.
FROZEN_CHANGE = 0.5 / 255
# Sharpness: the standard deviation of the luma's Laplacian over that of the luma itself. Sharp photographs score
# 0.16-2.3 at the encoder's scale (AV-Digits: 0.19 and up), the more so the more texture they hold; a Gaussian
# blur of 2 px at 224 px (a point spread over about 5 px, 2 % of the frame) brings an ordinary scene to 0.04-0.08,
# a blur of 3 px even grass to 0.12.
SHARPNESS = 0.10
# Below half a level of contrast a picture holds nothing but rounding: its sharpness is not judged (the dark check
# speaks for a black one). Above it even a flat card's sensor noise reads sharp, as it should: noise is not blur.
JUDGED_CONTRAST = 0.5 / 255
ENCODER_SIDE = 224


@dataclass(frozen=True)
class ClipSignals:
    """The measurements of one clip (luminance and changes as fractions of full scale)."""

    peak_dbfs: float
    full_scale_fraction: float  # of the samples at FULL_SCALE or above
    mean_luma: float  # the frames' mean luminance (median over frames), for the report
    bright_luma: float  # the frames' DARK_PERCENTILE luminance (median over frames)
    frame_change: float  # the mean absolute change between consecutive frames (median over the steps)
    sharpness: float | None  # median over the frames that have the contrast to judge; None if none has

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def luma(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> Rec. 601 luma, float32 0-1, no larger than the encoders see it."""
    gray = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    height, width = gray.shape
    scale = ENCODER_SIDE / min(height, width)
    if scale < 1:  # only ever shrunk: enlarging would add blur of its own
        gray = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    return gray


def sharpness(gray: np.ndarray) -> float | None:
    contrast = float(gray.std())
    if contrast < JUDGED_CONTRAST:
        return None
    return float(cv2.Laplacian(gray, cv2.CV_32F).std()) / contrast


def measure_signals(waveform: np.ndarray, frames: Sequence[np.ndarray]) -> ClipSignals:
    """A decoded clip (mono float waveform, full scale 1; RGB uint8 frames sampled over the clip) -> its signals."""
    magnitude = np.abs(np.asarray(waveform, np.float32))
    peak = float(magnitude.max()) if magnitude.size else 0.0
    grays = [luma(frame) for frame in frames]
    changes = [float(np.abs(a - b).mean()) for a, b in zip(grays, grays[1:])]
    judged = [s for s in map(sharpness, grays) if s is not None]
    return ClipSignals(
        peak_dbfs=float(20 * np.log10(peak)) if peak > 0 else float("-inf"),
        full_scale_fraction=float((magnitude >= FULL_SCALE).mean()) if magnitude.size else 0.0,
        mean_luma=float(np.median([g.mean() for g in grays])),
        bright_luma=float(np.median([np.percentile(g, DARK_PERCENTILE) for g in grays])),
        frame_change=float(np.median(changes)) if changes else float("inf"),
        sharpness=float(np.median(judged)) if judged else None)


def signal_faults(signals: ClipSignals) -> list[str]:
    """Why the recording looks wrong, one short phrase per fault; [] when nothing does."""
    faults = []
    if signals.peak_dbfs < SILENT_DBFS:
        faults.append(f"silent audio (peak {signals.peak_dbfs:.0f} dBFS)")
    elif signals.full_scale_fraction > CLIPPED_FRACTION:
        faults.append(f"clipped audio ({100 * signals.full_scale_fraction:.1f} % of samples at full scale)")
    if signals.bright_luma < DARK_LUMA:
        # A dark picture is also still and featureless: the dark camera is the one fault to name.
        faults.append(f"dark camera (mean luminance {100 * signals.mean_luma:.0f} %, brightest parts "
                      f"{100 * signals.bright_luma:.0f} %)")
        return faults
    if signals.frame_change < FROZEN_CHANGE:
        faults.append(f"frozen camera (frames change by {255 * signals.frame_change:.2f} of 255 levels)")
    if signals.sharpness is not None and signals.sharpness < SHARPNESS:
        faults.append(f"blurred camera (sharpness {signals.sharpness:.2f}, sharp pictures 0.16 and up)")
    return faults
