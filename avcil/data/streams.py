"""AV-Digits streams: the open world the device lives in, as files.

A stream is one video file (160x160, 15 fps) and one wav (16 kHz) in which AV-Digits clips of the known classes
start at random moments between 4-9 s stretches of background that hold none of them. Background is drawn from
content the AV-Digits clips do not use as a class: scenes (scikit-image photos panning, the AV-Digits textured
scene with no digit drawn, a dark room), printed letters and words drifting over a scene; and, independently,
silence, coloured noise, synthetic music, real recorded speech that is not a digit (the Asterisk prompts, three
speakers and languages) and espeak-ng words. The two splits draw events from AV-Digits' val and test clips
(disjoint speakers and handwriting) and background from disjoint thirds of every content pool, so that a threshold
chosen on `val` streams is measured on `test` streams; the `train` third makes background clips that a model
learns as background (`build_background_clips`, what `avcil learn --background --files` takes).

`build_streams(out, av_digits, split, background_hours, seed)` writes OUT/<split>/stream-NN.mp4 / .wav and
OUT/<split>/streams.json: per stream its duration, its events (label, start, end, clip) and its background
stretches (start, end, visual kind, audio kind). A second call with the same settings returns at once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import zlib
from pathlib import Path

import cv2
import numpy as np

from avcil.data.avdigits import ASTERISK_SOUNDS, FPS, FRAME_SIZE, SAMPLE_RATE, _background, _background_photos, _noise
from avcil.errors import InvalidInput, StageFailed
from avcil.fileio import atomic_write

STREAM_VERSION = 2
STREAM_SECONDS = 300.0  # one file per five minutes of stream
GAP_S = (4.0, 9.0)  # background between two events
STEP_S = 0.2  # every stretch lasts a whole number of these: 3 frames at 15 fps, 3200 samples at 16 kHz
VISUAL_KINDS = ("photo", "scene", "letters", "dark")
AUDIO_KINDS = ("silence", "noise", "music", "speech", "espeak")
ESPEAK_WORDS = {"train": ["thank you", "welcome", "blue", "green", "yes", "no", "goodbye", "please", "music",
                          "today"],
                "val": ["hello", "water", "window", "yellow", "morning", "garden", "table", "river", "kitchen",
                        "button", "paper", "orange"],
                "test": ["coffee", "purple", "doorbell", "station", "monday", "summer", "pocket", "silver", "camera",
                         "letter", "apple", "forest"]}
LETTERS = {"train": "abcdefghjk", "val": "ABCDEFGHJKLM", "test": "NPQRSTUVWXYZ"}
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
         cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)


CONTENT_SPLITS = ("train", "val", "test")


def _mine(name: str, split: str) -> bool:
    """Whether a content item belongs to this split's third (a stable hash of its name): background that a model
    learns from (`train`), that thresholds are chosen on (`val`) and that they are measured on (`test`)."""
    return zlib.crc32(name.encode()) % 3 == CONTENT_SPLITS.index(split)


def _steps(seconds: float) -> int:
    return max(1, int(round(seconds / STEP_S)))


class _Content:
    """The background pools of one split, loaded once."""

    def __init__(self, split: str):
        from avcil.data.preprocess import resample
        import soundfile as sf

        self.split = split
        self.photos = [photo for name, photo in _photos().items() if _mine(name, split)]
        # The AV-Digits scene scales a photo down to half before cropping its 208-pixel canvas.
        self.scene_photos = [photo for photo in self.photos if min(photo.shape[:2]) >= 420]
        self.prompts = []
        for path in sorted(ASTERISK_SOUNDS.glob("*/*.wav")):  # prompts only: digits/ and letters/ are subfolders
            if _mine(path.name, split):
                samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
                if 0.4 < len(samples) / rate < 4.0:
                    self.prompts.append(resample(samples.mean(axis=1), rate, SAMPLE_RATE))
        if not self.prompts:
            raise StageFailed(f"no recorded prompts under {ASTERISK_SOUNDS} (set-up installs "
                              f"asterisk-core-sounds-*-wav)")
        self.words = [_espeak(word) for word in ESPEAK_WORDS[split]]

    # Video ---------------------------------------------------------------------------------------------------
    def frames(self, rng: np.random.Generator, kind: str, count: int) -> np.ndarray:
        if kind == "dark":
            level = rng.uniform(3, 25)
            return np.clip(level + rng.normal(0, 2, (count, FRAME_SIZE, FRAME_SIZE, 3)), 0, 255).astype(np.uint8)
        if kind == "photo":
            photo = self.photos[int(rng.integers(len(self.photos)))]
            size = int(rng.integers(FRAME_SIZE + 40, min(photo.shape[:2])))
            y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
            crop = cv2.resize(photo[y:y + size, x:x + size], (FRAME_SIZE + 40, FRAME_SIZE + 40))
            offsets = (np.linspace(0, 1, count)[:, None] * rng.uniform(-20, 20, 2) + 20).astype(int)
            return np.stack([crop[oy:oy + FRAME_SIZE, ox:ox + FRAME_SIZE] for oy, ox in offsets]).astype(np.uint8)
        scene, _ = _background(rng, self.scene_photos, count)
        scene = np.ascontiguousarray(np.clip(scene, 0, 255).astype(np.uint8))
        if kind == "letters":
            self._draw_text(rng, scene)
        return scene

    def _draw_text(self, rng: np.random.Generator, scene: np.ndarray) -> None:
        letters = LETTERS[self.split]
        text = "".join(rng.choice(list(letters), size=int(rng.integers(1, 4))))
        font, scale = FONTS[int(rng.integers(len(FONTS)))], float(rng.uniform(1.2, 2.4)) / len(text) ** 0.5
        colour = tuple(float(c) for c in rng.uniform(150, 255, 3))
        start, drift, thickness = rng.uniform(20, 90, 2), rng.uniform(-15, 15, 2), int(rng.integers(2, 5))
        for i, frame in enumerate(scene):
            x, y = start + drift * i / max(1, len(scene) - 1)
            cv2.putText(frame, text, (int(x) - 10, int(y) + 50), font, scale, colour, thickness, cv2.LINE_AA)

    # Audio ---------------------------------------------------------------------------------------------------
    def audio(self, rng: np.random.Generator, kind: str, samples: int) -> np.ndarray:
        level = 0.08 * 10 ** (rng.uniform(-8, 4) / 20)  # the AV-Digits clips' loudness range
        floor = _noise(rng, samples) * level * 10 ** (-rng.uniform(15, 30) / 20)
        if kind == "silence":
            return (floor * 0.1).astype(np.float32)
        if kind == "noise":
            return (_noise(rng, samples) * level).astype(np.float32)
        if kind == "music":
            return (floor + _music(rng, samples) * level).astype(np.float32)
        pool = self.prompts if kind == "speech" else self.words
        track = floor.copy()
        at = int(rng.integers(0, max(1, samples // 4)))
        while at < samples:
            clip = pool[int(rng.integers(len(pool)))]
            clip = clip[:samples - at] / max(1e-6, np.sqrt(np.mean(clip ** 2)))
            track[at:at + len(clip)] += clip * level
            at += len(clip) + int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
        return np.clip(track, -0.99, 0.99).astype(np.float32)


SKIMAGE_PHOTOS = ("astronaut", "cat", "chelsea", "coffee", "colorwheel", "retina", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "stereo_motorcycle", "brick", "camera", "clock", "coins", "grass", "gravel",
                  "horse", "moon", "page", "text")


def _photos() -> dict[str, np.ndarray]:
    """Photos by name: scikit-learn's two (the AV-Digits scenes' own) and scikit-image's, BGR float32."""
    import skimage.data

    photos = {f"sklearn{i}": photo for i, photo in enumerate(_background_photos())}
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        if min(image.shape[:2]) > 260:  # a crop of the frame size with room to pan
            photos[name] = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2BGR).astype(np.float32)
    return photos


def _espeak(word: str) -> np.ndarray:
    from avcil.data.preprocess import resample
    import io
    import soundfile as sf

    wav = subprocess.run(["espeak-ng", "-v", "en", "--stdout", word], capture_output=True, check=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return resample(samples.mean(axis=1), rate, SAMPLE_RATE)


def _music(rng: np.random.Generator, samples: int) -> np.ndarray:
    """A few bars of a synthetic instrument: notes of a random scale with harmonics and a decaying envelope."""
    t = np.arange(samples) / SAMPLE_RATE
    out = np.zeros(samples)
    note_s = rng.uniform(0.15, 0.5)
    root = rng.uniform(110, 330)
    harmonics = rng.uniform(0.1, 0.8, 5) ** np.arange(1, 6)
    for start in np.arange(0, samples / SAMPLE_RATE, note_s):
        frequency = root * 2 ** (int(rng.choice([0, 2, 4, 5, 7, 9, 11, 12])) / 12)
        span = (t >= start) & (t < start + note_s * 1.5)
        local = t[span] - start
        tone = sum(a * np.sin(2 * np.pi * frequency * (h + 1) * local) for h, a in enumerate(harmonics))
        out[span] += tone * np.exp(-local * rng.uniform(2, 8))
    return out / max(1e-6, np.sqrt(np.mean(out ** 2)))


def _clip_media(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from avcil.data.decode import read_audio

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.resize(frame, (FRAME_SIZE, FRAME_SIZE)))
    capture.release()
    return np.stack(frames), read_audio(path, SAMPLE_RATE)


def _fit(array: np.ndarray, length: int) -> np.ndarray:
    """`array` cut or padded (repeating its last element) to `length` along its first axis."""
    if len(array) >= length:
        return array[:length]
    return np.concatenate([array, np.repeat(array[-1:], length - len(array), axis=0)])


class _StreamWriter:
    """Frames piped to ffmpeg (H.264) and samples gathered for one wav."""

    def __init__(self, base: Path):
        self.video_path, self.audio_path = base.with_suffix(".mp4"), base.with_suffix(".wav")
        self.ffmpeg = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s",
             f"{FRAME_SIZE}x{FRAME_SIZE}", "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "veryfast",
             "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1", "-y", str(self.video_path)], stdin=subprocess.PIPE)
        self.audio: list[np.ndarray] = []
        self.seconds = 0.0

    def add(self, frames: np.ndarray, audio: np.ndarray, steps: int) -> tuple[float, float]:
        """Append `steps` x STEP_S seconds; returns the stretch's (start, end) in stream seconds."""
        count, samples = round(steps * STEP_S * FPS), round(steps * STEP_S * SAMPLE_RATE)
        self.ffmpeg.stdin.write(np.ascontiguousarray(_fit(frames, count)).tobytes())
        self.audio.append(_fit(audio, samples).astype(np.float32))
        start = self.seconds
        self.seconds = round(self.seconds + steps * STEP_S, 3)
        return start, self.seconds

    def close(self) -> None:
        import soundfile as sf

        self.ffmpeg.stdin.close()
        if self.ffmpeg.wait() != 0:
            raise StageFailed(f"ffmpeg failed writing {self.video_path}")
        sf.write(self.audio_path, np.concatenate(self.audio), SAMPLE_RATE, subtype="PCM_16")


def _event_clips(av_digits: Path, split: str, classes: list[str]) -> list[tuple[str, Path]]:
    clip_split = {"val": "val", "test": "test"}[split]
    with open(av_digits / "clips.csv", newline="") as f:
        return [(row["label"], av_digits / row["path"]) for row in csv.DictReader(f)
                if row["split"] == clip_split and row["label"] in classes]


def build_streams(out: str | Path, av_digits: str | Path, split: str = "test", background_hours: float = 1.0,
                  seed: int = 0, classes: list[str] | None = None, progress: bool = True) -> dict:
    """Write the streams of one split (see the module's docstring); returns the streams.json record."""
    from tqdm import tqdm

    if split not in ("val", "test"):
        raise InvalidInput(f"stream split {split!r}: expected val or test")
    if not background_hours > 0:
        raise InvalidInput(f"background hours must be positive, got {background_hours}")
    classes = classes or [str(d) for d in range(10)]
    settings = {"version": STREAM_VERSION, "split": split, "background_hours": background_hours, "seed": seed,
                "classes": classes, "av_digits": str(Path(av_digits).resolve())}
    sha = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(out) / f"{split}-{sha}"
    index = folder / "streams.json"
    if index.is_file():
        return json.loads(index.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    clips = _event_clips(Path(av_digits), split, classes)
    if not clips:
        raise InvalidInput(f"{av_digits}: no {split} clips of classes {classes}")
    rng = np.random.default_rng([seed, 1 if split == "val" else 2])
    content = _Content(split)
    order = rng.permutation(len(clips))
    streams, background_s, event = [], 0.0, 0
    bar = tqdm(total=round(background_hours * 3600), desc=f"{split} streams", unit="s", disable=not progress)
    while background_s < background_hours * 3600 - 1e-6:
        writer = _StreamWriter(folder / f"stream-{len(streams):02d}")
        record = {"video": writer.video_path.name, "audio": writer.audio_path.name, "events": [], "background": []}
        while writer.seconds < STREAM_SECONDS and background_s < background_hours * 3600 - 1e-6:
            steps = _steps(min(rng.uniform(*GAP_S), background_hours * 3600 - background_s + STEP_S / 2))
            visual, sound = str(rng.choice(VISUAL_KINDS)), str(rng.choice(AUDIO_KINDS))
            samples = round(steps * STEP_S * SAMPLE_RATE)
            frames = content.frames(rng, visual, round(steps * STEP_S * FPS))
            start, end = writer.add(frames, content.audio(rng, sound, samples), steps)
            record["background"].append({"start": start, "end": end, "visual": visual, "audio": sound})
            background_s += end - start
            bar.update(round(end - start))
            label, path = clips[order[event % len(order)]]
            event += 1
            frames, audio = _clip_media(path)
            start, end = writer.add(frames, audio, _steps(len(audio) / SAMPLE_RATE))
            record["events"].append({"label": label, "start": start, "end": end, "clip": path.name})
        writer.close()
        record["seconds"] = writer.seconds
        streams.append(record)
    bar.close()
    result = {"settings": settings, "background_hours": background_s / 3600, "events": event, "streams": streams}
    atomic_write(index, json.dumps(result, indent=1).encode())
    return result


BACKGROUND_CLIPS = 60  # background clips the demo learns as background (3-6 s each, content no stream holds)


def build_background_clips(out: str | Path, count: int = BACKGROUND_CLIPS, seed: int = 0,
                           progress: bool = True) -> list[Path]:
    """`count` clips of 3-6 s of background from the `train` third of the content (never in val or test streams):
    OUT/background-<hash>/bg-NNN.mp4 with their sound tracks. A second call with the same settings returns them."""
    from tqdm import tqdm

    settings = {"version": STREAM_VERSION, "count": count, "seed": seed}
    folder = Path(out) / f"background-{hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]}"
    paths = [folder / f"bg-{i:03d}.mp4" for i in range(count)]
    if all(p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    content = _Content("train")
    for path in tqdm(paths, desc="background clips", unit="clip", disable=not progress):
        steps = _steps(rng.uniform(3.0, 6.0))
        visual, sound = str(rng.choice(VISUAL_KINDS)), str(rng.choice(AUDIO_KINDS))
        writer = _StreamWriter(folder / f"{path.stem}-parts")
        writer.add(content.frames(rng, visual, round(steps * STEP_S * FPS)),
                   content.audio(rng, sound, round(steps * STEP_S * SAMPLE_RATE)), steps)
        writer.close()
        _mux(writer.video_path, writer.audio_path, path)
    return paths


def _mux(video: Path, audio: Path, out: Path) -> None:
    """One file with both tracks (what a camera with a microphone records), the parts removed."""
    partial = out.with_suffix(".partial.mp4")
    done = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(video), "-i", str(audio), "-c:v", "copy",
                           "-c:a", "aac", "-b:a", "64k", "-shortest", "-y", str(partial)], capture_output=True)
    if done.returncode != 0:
        raise StageFailed(f"ffmpeg failed muxing {out}: {done.stderr.decode(errors='replace')[-300:]}")
    partial.replace(out)
    video.unlink()
    audio.unlink()
