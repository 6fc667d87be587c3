"""AV-Digits: a small audio-visual benchmark built offline from real content.

Each clip shows a handwritten digit (scikit-learn `load_digits`, 8x8, upscaled) drifting over a textured background
with a smaller, fainter distractor digit of another class elsewhere in the frame, and its sound track is that digit
spoken at a random moment over background noise. Voices are real recordings (Debian asterisk-core-sounds, one
speaker per language) and synthetic ones (ffmpeg's flite, espeak-ng in English, Spanish and French). Every clip
varies its speaker's recording in gain, pitch, tempo and bandwidth, so that no two clips of a speaker are alike.

Splits are disjoint in speakers and in digit images, so the test split measures recognition of unseen voices and
unseen handwriting (see `ROSTER`; the one shared person is stated there). `build_av_digits` writes
DIR/clips/<split>/<label>/<id>.mp4, DIR/clips.csv (path,label,split, the input of `avcil extract`) and
DIR/avdigits.json (settings, their hash, the speaker and image assignment, per-clip parameters); a second call
with the same settings finds the json and returns at once.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np
import soundfile as sf
from tqdm import tqdm

from avcil.errors import AvcilError, InvalidInput, StageFailed
from avcil.data.clips import SPLITS

AV_DIGITS_CLASSES = [str(d) for d in range(10)]
AV_DIGITS_STEPS = 5
# Bump when the generator's output changes for unchanged settings, so that cached builds are rebuilt.
GENERATOR_VERSION = 1

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds")
SAMPLE_RATE = 16000
FRAME_SIZE = 160
FPS = 15
DURATION_S = 2.0
DEFAULT_CLIPS_PER_CLASS = {"train": 40, "val": 8, "test": 12}
# Share of each class's sklearn digit images that each split draws from (disjoint pools).
IMAGE_FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}
WORDS = {
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "es": ["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
    "fr": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
}
ASTERISK_PACKAGES = {"en": "asterisk-core-sounds-en-wav", "es": "asterisk-core-sounds-es-wav",
                     "fr": "asterisk-core-sounds-fr-wav"}


class MissingDependency(AvcilError, RuntimeError):
    """A program or a Debian sound package the builder needs is not installed."""


@dataclass(frozen=True)
class Speaker:
    id: str
    kind: str  # asterisk | flite | espeak
    language: str
    person: str  # who (or which synthetic voice) is behind it: two speakers of one person share it
    voice: str  # asterisk folder, flite voice or espeak-ng voice+variant
    pitch: int = 50  # espeak-ng -p
    speed: int = 160  # espeak-ng -s, words per minute


def _espeak(voice: str, pitch: int, speed: int) -> Speaker:
    language = voice.split("-")[0].split("+")[0]
    return Speaker(f"espeak-{voice}", "espeak", language, f"espeak-ng {voice}", voice, pitch, speed)


# Who speaks in which split. Speakers never repeat across splits and no espeak-ng variant (f1..f5, m1..m8) is
# used twice. The asterisk packages hold two people: Allison records English (train) and Spanish (val); June,
# French, is kept for test alone, so test's real voice is a person never heard in training. flite's kal and kal16
# are one diphone voice at two rates, so both stay in train.
ROSTER: dict[str, list[Speaker]] = {
    "train": [
        Speaker("asterisk-en_US_f_Allison", "asterisk", "en", "Allison", "en_US_f_Allison"),
        Speaker("flite-kal", "flite", "en", "flite kal", "kal"),
        Speaker("flite-kal16", "flite", "en", "flite kal", "kal16"),
        Speaker("flite-awb", "flite", "en", "flite awb", "awb"),
        _espeak("en-us+m3", 45, 150),
        _espeak("en+f3", 60, 170),
        _espeak("en-gb-scotland+m1", 40, 160),
        _espeak("es+f1", 65, 155),
        _espeak("es-419+m2", 35, 165),
        _espeak("fr+m4", 50, 150),
        _espeak("fr-be+f2", 70, 160),
    ],
    "val": [
        Speaker("asterisk-es_MX_f_Allison", "asterisk", "es", "Allison", "es_MX_f_Allison"),
        Speaker("flite-rms", "flite", "en", "flite rms", "rms"),
        _espeak("en-gb-x-rp+f4", 55, 165),
        _espeak("es+m5", 45, 150),
        _espeak("fr+m6", 40, 170),
    ],
    "test": [
        Speaker("asterisk-fr_CA_f_June", "asterisk", "fr", "June", "fr_CA_f_June"),
        Speaker("flite-slt", "flite", "en", "flite slt", "slt"),
        _espeak("en-029+f5", 60, 155),
        _espeak("en-us+m7", 50, 175),
        _espeak("es-419+m8", 45, 160),
        _espeak("fr-ch+klatt", 55, 150),
    ],
}
SPEAKERS = {s.id: s for split in SPLITS for s in ROSTER[split]}


# --- voices: each speaker's ten digits as clean 16 kHz waveforms --------------------------------------------------

def _run(command: list[str], what: str, data: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=600)
    except FileNotFoundError as error:
        raise MissingDependency(f"{command[0]} is not installed; install it with `apt-get install {command[0]}`") \
            from error
    if done.returncode != 0:
        raise StageFailed(f"{what} failed ({' '.join(command[:8])} ...): "
                           f"{done.stderr.decode(errors='replace').strip()[-400:]}")
    return done.stdout


def _asterisk_file(speaker: Speaker, digit: int) -> Path:
    return ASTERISK_SOUNDS / speaker.voice / "digits" / f"{digit}.wav"


def check_dependencies(speakers: list[Speaker]) -> None:
    """Fail early, naming the package to install, before any work is done."""
    for program in ("ffmpeg", "espeak-ng"):
        if shutil.which(program) is None:
            raise MissingDependency(f"{program} is not on PATH; install it with `apt-get install {program}`")
    for speaker in speakers:
        if speaker.kind != "asterisk":
            continue
        missing = [d for d in range(10) if not _asterisk_file(speaker, d).is_file()]
        if missing:
            raise MissingDependency(
                f"{_asterisk_file(speaker, missing[0])} not found (real {speaker.language} digit recordings); "
                f"install them with `apt-get install {ASTERISK_PACKAGES[speaker.language]}`")


def _trim_and_normalise(x: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence (keeping 30 ms) so that a clip's recorded onset is the speech onset."""
    hop = SAMPLE_RATE // 100
    energy = np.array([np.mean(x[i:i + hop] ** 2) for i in range(0, len(x) - hop + 1, hop)])
    active = np.flatnonzero(energy > energy.max() * 10 ** (-40 / 10))
    margin = 3 * hop
    x = x[max(0, active[0] * hop - margin):min(len(x), (active[-1] + 1) * hop + margin)]
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly  # here, not at the top: `avcil` builds its parser from this module

    ratio = Fraction(SAMPLE_RATE, rate)
    return resample_poly(x, ratio.numerator, ratio.denominator) if rate != SAMPLE_RATE else x


def _asterisk_digits(speaker: Speaker) -> list[np.ndarray]:
    digits = []
    for d in range(10):
        x, rate = sf.read(_asterisk_file(speaker, d), dtype="float64", always_2d=True)
        digits.append(_resample(x.mean(axis=1), rate))
    return digits


def _flite_digits(speaker: Speaker) -> list[np.ndarray]:
    # One ffmpeg for all ten words: its start-up costs more than the synthesis.
    with tempfile.TemporaryDirectory() as tmp:
        command = ["ffmpeg", "-nostdin", "-v", "error"]
        for word in WORDS[speaker.language]:
            command += ["-f", "lavfi", "-i", f"flite=text={word}:voice={speaker.voice}"]
        for d in range(10):
            command += ["-map", f"{d}:a", "-ac", "1", "-ar", str(SAMPLE_RATE), f"{tmp}/{d}.wav"]
        _run(command, f"flite voice {speaker.voice} (ffmpeg needs libflite: Debian's `apt-get install ffmpeg`)")
        return [sf.read(f"{tmp}/{d}.wav", dtype="float64")[0] for d in range(10)]


def _espeak_digits(speaker: Speaker) -> list[np.ndarray]:
    digits = []
    for word in WORDS[speaker.language]:
        wav = _run(["espeak-ng", "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.speed),
                    "--stdout", word], f"espeak-ng voice {speaker.voice}")
        x, rate = sf.read(io.BytesIO(wav), dtype="float64")
        digits.append(_resample(x, rate))
    return digits


def speaker_digits(speaker: Speaker) -> list[np.ndarray]:
    """The speaker's digits 0..9: mono float32 at 16 kHz, silence trimmed, unit RMS."""
    synthesise = {"asterisk": _asterisk_digits, "flite": _flite_digits, "espeak": _espeak_digits}[speaker.kind]
    return [_trim_and_normalise(x) for x in synthesise(speaker)]


# --- audio: one clip's sound track ---------------------------------------------------------------------------------

def time_stretch(x: np.ndarray, speed: float, frame: int = 512, tolerance: int = 160) -> np.ndarray:
    """Change tempo by `speed` (> 1 faster) and keep the pitch (WSOLA: overlap-add of frames shifted within
    `tolerance` samples to where they continue the previous frame best, so that no phase jumps are heard)."""
    hop = frame // 2
    window = np.hanning(frame + 1)[:frame]  # periodic Hann: overlapping halves sum to one
    padded = np.pad(x, (tolerance, 2 * frame + 2 * tolerance + int(hop * speed)))
    n_out = int(round(len(x) / speed))
    out = np.zeros(n_out + frame)
    previous = tolerance
    for k in range(n_out // hop + 1):
        nominal = tolerance + int(round(k * hop * speed))
        if k == 0:
            position = nominal
        else:
            continuation = padded[previous + hop:previous + hop + frame]
            low = nominal - tolerance
            similarity = np.correlate(padded[low:nominal + tolerance + frame], continuation, mode="valid")
            position = low + int(np.argmax(similarity))
        out[k * hop:k * hop + frame] += padded[position:position + frame] * window
        previous = position
    return out[:n_out]


def augment_speech(x: np.ndarray, pitch: float, tempo: float, lowpass_hz: float | None) -> np.ndarray:
    """A recording `pitch` times higher, `tempo` times faster, band-limited to `lowpass_hz` (None: full band)."""
    from scipy.signal import butter, resample_poly, sosfilt

    ratio = Fraction(pitch).limit_denominator(64)
    # Resampling raises pitch and tempo together; the stretch then sets the tempo alone.
    y = resample_poly(np.asarray(x, dtype=np.float64), ratio.denominator, ratio.numerator)
    y = time_stretch(y, tempo / pitch)
    if lowpass_hz is not None:
        y = sosfilt(butter(6, lowpass_hz, fs=SAMPLE_RATE, output="sos"), y)
    return y.astype(np.float32)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS coloured noise (white to brown), slowly swelling, sometimes with mains hum."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequency = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] *= frequency[1:] ** (-rng.uniform(0.0, 1.8) / 2)
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    t = np.arange(n) / SAMPLE_RATE
    noise *= 1 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * t + rng.uniform(0, 2 * np.pi))
    noise /= np.sqrt(np.mean(noise ** 2))
    if rng.random() < 0.3:
        mains = rng.choice([50.0, 60.0])
        hum = sum(np.sin(2 * np.pi * mains * h * t) / h for h in (1, 2, 3))
        noise += 0.5 * hum / np.sqrt(np.mean(hum ** 2))
    return noise


def render_audio(rng: np.random.Generator, clean: np.ndarray) -> tuple[np.ndarray, dict]:
    """The clip's sound track: the augmented digit at a random onset in noise, at a random level."""
    params = {"pitch": float(rng.uniform(0.9, 1.12)), "tempo": float(rng.uniform(0.85, 1.15)),
              "lowpass_hz": float(rng.uniform(3000, 7000)) if rng.random() < 0.6 else None}
    speech = augment_speech(clean, **params)
    n = int(round(DURATION_S * SAMPLE_RATE))
    margin = int(0.1 * SAMPLE_RATE)
    onset = int(rng.integers(margin, n - len(speech) - margin + 1))
    snr_db = float(rng.uniform(5, 20))
    track = _noise(rng, n) * np.sqrt(np.mean(speech ** 2)) / 10 ** (snr_db / 20)
    track[onset:onset + len(speech)] += speech
    gain_db = float(rng.uniform(-8, 4))
    track *= 0.08 * 10 ** (gain_db / 20) / np.sqrt(np.mean(track ** 2))
    track /= max(1.0, np.abs(track).max() / 0.99)
    params.update(onset_s=onset / SAMPLE_RATE, speech_s=len(speech) / SAMPLE_RATE, snr_db=snr_db, gain_db=gain_db)
    return track.astype(np.float32), params


# --- video: one clip's frames --------------------------------------------------------------------------------------

def _background_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [cv2.cvtColor(image, cv2.COLOR_RGB2BGR).astype(np.float32) for image in load_sample_images().images]


def _background(rng: np.random.Generator, photos: list[np.ndarray], frames: int) -> tuple[np.ndarray, str]:
    """[frames, H, W, 3] float: a dimmed photo crop or a smooth random texture, panning slowly."""
    pan = rng.uniform(-1.0, 1.0, size=2) * 20
    extent = FRAME_SIZE + 2 * 24
    if rng.random() < 0.6:
        which = int(rng.integers(len(photos)))
        photo = photos[which]
        scale = rng.uniform(0.5, 0.9)
        photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        y, x = rng.integers(0, photo.shape[0] - extent), rng.integers(0, photo.shape[1] - extent)
        canvas = photo[y:y + extent, x:x + extent][..., rng.permutation(3)]
        kind = f"photo{which}"
    else:
        coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.float32)
        fine = rng.uniform(0, 255, size=(40, 40, 3)).astype(np.float32)
        canvas = (0.7 * cv2.resize(coarse, (extent, extent), interpolation=cv2.INTER_CUBIC)
                  + 0.3 * cv2.resize(fine, (extent, extent), interpolation=cv2.INTER_LINEAR))
        kind = "texture"
    # Dim and flatten so that the digits, drawn bright, stay the most salient thing in the frame.
    canvas = 0.45 * cv2.GaussianBlur(canvas, (0, 0), 1.0) + 0.1 * canvas.mean()
    offsets = np.linspace(0, 1, frames)[:, None] * pan + 24
    return np.stack([canvas[int(oy):int(oy) + FRAME_SIZE, int(ox):int(ox) + FRAME_SIZE]
                     for oy, ox in offsets]), kind


def glyph_alpha(image8: np.ndarray, size: int, angle: float) -> np.ndarray:
    """Alpha [size, size] of an 8x8 digit image (values 0..16), upscaled smoothly, turned by `angle` degrees."""
    alpha = np.clip(cv2.resize(image8.astype(np.float32) / 16, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    return np.clip(cv2.warpAffine(alpha, turn, (size, size)) * 1.3 - 0.1, 0, 1)


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(60, 200), 255]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _draw(frame: np.ndarray, alpha: np.ndarray, colour: np.ndarray, top_left: np.ndarray) -> None:
    y, x = top_left
    h, w = alpha.shape
    a = alpha[..., None]
    frame[y:y + h, x:x + w] = frame[y:y + h, x:x + w] * (1 - a) + colour * a


def render_frames(rng: np.random.Generator, target8: np.ndarray, distractor8: np.ndarray,
                  photos: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """BGR uint8 [frames, H, W, 3]: the target digit drifting, a smaller fainter distractor away from its path."""
    frames = int(round(DURATION_S * FPS))
    background, kind = _background(rng, photos, frames)
    size, small = int(rng.integers(52, 76)), int(rng.integers(26, 40))
    angle = float(rng.uniform(-15, 15))
    target, distractor = glyph_alpha(target8, size, angle), glyph_alpha(distractor8, small, rng.uniform(-15, 15))
    room = FRAME_SIZE - size
    start = rng.uniform(0, room, size=2)
    # The end point: of a few random places, the one whose distance from the start is nearest a drawn travel.
    ends = rng.uniform(0, room, size=(16, 2))
    end = ends[np.argmin(np.abs(np.linalg.norm(ends - start, axis=1) - rng.uniform(30, 70)))]
    t = np.linspace(0, 1, frames)[:, None]
    wobble = 3 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi, size=2))
    path = np.rint(np.clip(start + (end - start) * t + wobble, 0, room)).astype(int)  # top-left (row, column)
    # The distractor sits where it overlaps the target's path least (best of a few random places).
    centres = path + size / 2
    places = rng.uniform(0, FRAME_SIZE - small, size=(32, 2))
    clearance = np.linalg.norm(centres[None] - (places[:, None] + small / 2), axis=2).min(axis=1)
    place = np.rint(places[int(np.argmax(clearance))]).astype(int)
    colour, faint_colour = _bright_colour(rng), _bright_colour(rng)
    opacity = float(rng.uniform(0.45, 0.75))
    grain = rng.uniform(2, 6)
    video = background
    for i in range(frames):
        _draw(video[i], distractor * opacity, faint_colour, place)
        _draw(video[i], target, colour, path[i])
    video += rng.standard_normal(size=video.shape, dtype=np.float32) * grain
    meta = {"background": kind, "size": size, "angle": angle, "colour_bgr": colour.tolist(),
            "target_yx": path.tolist(), "distractor_size": small, "distractor_yx": place.tolist(),
            "distractor_opacity": opacity}
    return np.clip(video, 0, 255).astype(np.uint8), meta


# --- the plan: which clip gets which speaker and images ------------------------------------------------------------

@dataclass(frozen=True)
class ClipPlan:
    id: str
    path: str  # relative to the output folder
    split: str
    label: int
    number: int  # of the clip within its split and class
    speaker: str
    image: int  # index into sklearn load_digits
    distractor_label: int
    distractor_image: int


def image_pools(targets: np.ndarray, seed: int) -> dict[str, dict[int, list[int]]]:
    """Disjoint sklearn digit image indices per split and class (a seeded shuffle cut by IMAGE_FRACTIONS)."""
    rng = np.random.default_rng([seed, 1])
    pools: dict[str, dict[int, list[int]]] = {split: {} for split in SPLITS}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(targets == label))
        cuts = np.cumsum([round(IMAGE_FRACTIONS[s] * len(indices)) for s in SPLITS[:-1]])
        for split, part in zip(SPLITS, np.split(indices, cuts)):
            pools[split][label] = sorted(int(i) for i in part)
    return pools


def plan_clips(counts: Mapping[str, int], pools: dict[str, dict[int, list[int]]], seed: int) -> list[ClipPlan]:
    """Per split and class: speakers in turn (so each split's speakers are balanced over classes), target images
    without repetition until the pool runs out, a distractor of another class from the same split's pool.
    Clip k of a class does not depend on how many clips there are: a smaller build is part of a bigger one."""
    plans = []
    for split_no, split in enumerate(SPLITS):
        speakers = ROSTER[split]
        for label in range(10):
            rng = np.random.default_rng([seed, 2, split_no, label])
            images = rng.permutation(pools[split][label])
            for k in range(counts[split]):
                other = int((label + rng.integers(1, 10)) % 10)
                clip_id = f"{label}_{split}_{k:03d}"
                plans.append(ClipPlan(clip_id, f"clips/{split}/{label}/{clip_id}.mp4", split, label, k,
                                      speakers[(label + k) % len(speakers)].id, int(images[k % len(images)]),
                                      other, int(rng.choice(pools[split][other]))))
    return plans


# --- encoding: many clips per ffmpeg run, since ffmpeg's start-up costs more than a clip's encoding -----------------

def _encode(clips: list[tuple[Path, np.ndarray, np.ndarray]], tmp: Path) -> None:
    inputs, outputs = [], []
    for i, (path, video, audio) in enumerate(clips):
        video.tofile(tmp / f"{i}.bgr")
        sf.write(tmp / f"{i}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        inputs += ["-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{FRAME_SIZE}x{FRAME_SIZE}", "-r", str(FPS),
                   "-i", str(tmp / f"{i}.bgr"), "-i", str(tmp / f"{i}.wav")]
        path.parent.mkdir(parents=True, exist_ok=True)
        outputs += ["-map", f"{2 * i}:v", "-map", f"{2 * i + 1}:a",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1",
                    "-c:a", "aac", "-b:a", "64k", "-ar", str(SAMPLE_RATE), "-ac", "1",
                    # bitexact and no metadata: the same seed gives the same sound and, but for x264's rare
                    # differences on busy cores (a few macroblocks), the same frames
                    "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
                    "-movflags", "+faststart", "-y", str(path)]
    _run(["ffmpeg", "-nostdin", "-v", "error", *inputs, *outputs], f"encoding {clips[0][0].name} ...")


class _Renderer:
    def __init__(self, out: Path, seed: int, voices: dict[str, list[np.ndarray]]):
        from sklearn.datasets import load_digits

        self.out, self.seed, self.voices = out, seed, voices
        self.images = load_digits().images
        self.photos = _background_photos()

    def render(self, plan: ClipPlan) -> tuple[np.ndarray, np.ndarray, dict]:
        rng = np.random.default_rng([self.seed, 3, SPLITS.index(plan.split), plan.label, plan.number])
        video, visual = render_frames(rng, self.images[plan.image], self.images[plan.distractor_image], self.photos)
        audio, sound = render_audio(rng, self.voices[plan.speaker][plan.label])
        return video, audio, {**asdict(plan), **sound, **visual}

    def batch(self, plans: list[ClipPlan]) -> list[dict]:
        rendered = [self.render(p) for p in plans]
        with tempfile.TemporaryDirectory(prefix="avdigits-") as tmp:
            _encode([(self.out / p.path, v, a) for p, (v, a, _) in zip(plans, rendered)], Path(tmp))
        return [meta for _, _, meta in rendered]


# --- the build -----------------------------------------------------------------------------------------------------

def _counts(clips_per_class: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(clips_per_class, int):
        counts = {split: clips_per_class for split in SPLITS}
    else:
        counts = {split: int(clips_per_class.get(split, 0)) for split in SPLITS}
    if any(n < 1 for n in counts.values()):
        raise InvalidInput(f"clips per class {counts}: every split needs at least one clip per class")
    return counts


def settings_of(seed: int, counts: dict[str, int]) -> dict:
    """Everything the clips depend on; its hash decides whether a cached build is reused."""
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "clips_per_class": counts,
            "frame_size": FRAME_SIZE, "fps": FPS, "duration_s": DURATION_S, "sample_rate": SAMPLE_RATE,
            "image_fractions": IMAGE_FRACTIONS, "speakers": {s: [v.id for v in ROSTER[s]] for s in SPLITS}}


def _sha(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _cached(out: Path, sha: str) -> bool:
    try:
        manifest = json.loads((out / "avdigits.json").read_text())
        with open(out / "clips.csv", newline="") as f:
            paths = [row["path"] for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):
        return False
    return manifest.get("settings_sha") == sha and len(paths) == len(manifest.get("clips", [])) \
        and all((out / p).is_file() for p in paths)


def _tool_versions() -> dict[str, str]:
    return {program: _run([program, "--version" if program == "espeak-ng" else "-version"], program)
            .decode(errors="replace").splitlines()[0] for program in ("ffmpeg", "espeak-ng")}


def build_av_digits(out: str | Path, seed: int = 0, clips_per_class: int | Mapping[str, int] | None = None,
                    force: bool = False, workers: int | None = None, progress: bool = True) -> Path:
    """Build the AV-Digits clips under `out` (or reuse a build with the same settings); return DIR/clips.csv.

    `clips_per_class`: one number for every split, or {split: number}; default DEFAULT_CLIPS_PER_CLASS.
    """
    out = Path(out)
    counts = _counts(DEFAULT_CLIPS_PER_CLASS if clips_per_class is None else clips_per_class)
    settings = settings_of(seed, counts)
    sha = _sha(settings)
    if not force and _cached(out, sha):
        return out / "clips.csv"
    speakers = [s for split in SPLITS for s in ROSTER[split]]
    check_dependencies(speakers)
    started = time.perf_counter()
    # The manifest goes last: without it a half-written folder is never taken for a finished build.
    for stale in ("avdigits.json", "clips.csv"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "clips", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    from sklearn.datasets import load_digits

    pools = image_pools(load_digits().target, seed)
    plans = plan_clips(counts, pools, seed)
    workers = workers or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(workers) as pool:
        voices = {s.id: v for s, v in zip(speakers, pool.map(speaker_digits, speakers))}
        renderer = _Renderer(out, seed, voices)
        size = max(1, min(16, math.ceil(len(plans) / (3 * workers))))
        batches = [plans[i:i + size] for i in range(0, len(plans), size)]
        clips = []
        with tqdm(total=len(plans), desc="av-digits clips", unit="clip", file=sys.stderr,
                  disable=not progress) as bar:
            for metas in pool.map(renderer.batch, batches):
                clips += metas
                bar.update(len(metas))

    with open(out / "clips.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows([p.path, AV_DIGITS_CLASSES[p.label], p.split] for p in plans)
    manifest = {
        "format": "avcil-av-digits", "settings": settings, "settings_sha": sha,
        "classes": AV_DIGITS_CLASSES, "steps": AV_DIGITS_STEPS,
        "speakers": {split: [asdict(s) for s in ROSTER[split]] for split in SPLITS},
        "images": {split: {str(c): pools[split][c] for c in range(10)} for split in SPLITS},
        "counts": {split: {c: sum(p.split == split and p.label == i for p in plans)
                           for i, c in enumerate(AV_DIGITS_CLASSES)} for split in SPLITS},
        "tools": _tool_versions(), "build_seconds": round(time.perf_counter() - started, 1), "clips": clips,
    }
    tmp = out / "avdigits.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "avdigits.json")
    return out / "clips.csv"


# --- command line --------------------------------------------------------------------------------------------------

def _clips_per_class(text: str) -> int | dict[str, int]:
    parts = text.split(",")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        return numbers[0]
    if len(numbers) == len(SPLITS):
        return dict(zip(SPLITS, numbers))
    raise argparse.ArgumentTypeError(f"{text!r}: expected N (every split) or TRAIN,VAL,TEST, e.g. 40,8,12")


def _run_command(args: argparse.Namespace) -> int:
    csv_path = build_av_digits(args.out, seed=args.seed, clips_per_class=args.clips_per_class, force=args.force)
    manifest = json.loads((csv_path.parent / "avdigits.json").read_text())
    counts = {split: sum(c.values()) for split, c in manifest["counts"].items()}
    print(f"{csv_path}: {' / '.join(f'{counts[s]} {s}' for s in SPLITS)} clips "
          f"(built in {manifest['build_seconds']} s; settings {manifest['settings_sha'][:12]})")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `data` (benchmark builders) with its `av-digits` subcommand."""
    data = subparsers.add_parser("data", help="build benchmark clips offline")
    builders = data.add_subparsers(dest="data_command", metavar="BUILDER", required=True)
    p = builders.add_parser(
        "av-digits", help="spoken + handwritten digit clips (10 classes, 5 steps) from real recordings",
        description="Write DIR/clips/<split>/<label>/<id>.mp4, DIR/clips.csv (for `avcil extract --videos`) and "
                    "DIR/avdigits.json. A build with the same settings is reused unless --force.")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips-per-class", type=_clips_per_class, default=None, metavar="N|TRAIN,VAL,TEST",
                   help="clips per class: one number for every split or three (default "
                        f"{','.join(str(DEFAULT_CLIPS_PER_CLASS[s]) for s in SPLITS)})")
    p.add_argument("--force", action="store_true", help="rebuild even when a build with these settings exists")
    p.set_defaults(func=_run_command)
    return data


def clip_files(csv_path: Path) -> dict[tuple[str, str], list[Path]]:
    """{(split, label): [video files]} of an AV-Digits build."""
    files: dict[tuple[str, str], list[Path]] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            files.setdefault((row["split"], row["label"]), []).append(csv_path.parent / row["path"])
    return files
