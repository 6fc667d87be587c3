"""The Python API: avcil without the command line, over the paths the commands take (README.md#python-api).

    import avcil

    with avcil.Model.load("MODEL") as model:
        decision = model.predict(audio=waveform, sample_rate=16000, frames=frames)  # as `avcil run` decides a window
        summary = model.learn("doorbell", files=["a.mp4", "b.mp4"])                # as `avcil learn --files`

`predict` decides one window through the recogniser's `decide` (avcil.runtime.recognizer), and returns the dict of
a decision line; `learn`, `learn_background` and `correct` run avcil.runtime.learning, the functions
`avcil learn --files`, `--background` and `--not` call, and the model decides with the new version at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from avcil.errors import InvalidInput
from avcil.runtime.decision import DEFAULT_SMOOTHING, DEFAULT_TOP_K
from avcil.runtime.field_settings import DEFAULT_LOCK_WAIT_S

# Between two predicted clips on the model's own clock: the recogniser keeps the lite speech windows it embedded,
# keyed by their clock time, so each clip gets a span of its own, a second after the last.
CLIP_GAP_S = 1.0


class Model:
    """A model dir to decide with and to teach. `Model.load(model_dir)`; use it in a `with` block or `close()` it."""

    def __init__(self, recognizer, lock_wait_s: float = DEFAULT_LOCK_WAIT_S):
        from avcil.runtime.windows import window_seconds

        self._recognizer = recognizer
        self.lock_wait_s = lock_wait_s
        self.window_seconds = window_seconds(recognizer.audio_prep)
        self._next_start = 0.0

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "torch", score: str | None = None,
             threshold: float | None = None, *, device: str = "cpu", smoothing: int = DEFAULT_SMOOTHING,
             top_k: int = DEFAULT_TOP_K, watch: bool = False, lock_wait_s: float = DEFAULT_LOCK_WAIT_S) -> "Model":
        """The current version of `model_dir`, its encoders on `backend` (torch | onnxruntime | tensorrt; the
        latter two after `avcil export`). `score` and `threshold` as `avcil run --score/--threshold` (default: the
        version's own). `smoothing`, `top_k` as `avcil run --smoothing/--top-k`: the default decides each
        `predict` on its own; `smoothing=N` averages the scores of N consecutive calls. `watch`: follow
        versions committed by others (`avcil learn`, a rollback) as `avcil run` does; this model's own `learn`
        is followed either way."""
        from avcil.runtime.inputs import check_rule
        from avcil.runtime.recognizer import Recognizer

        check_rule(score, threshold, smoothing, top_k)
        return cls(Recognizer(model_dir, backend, device, threshold=threshold, smoothing=smoothing, top_k=top_k,
                              watch=watch, score=score), lock_wait_s)

    @property
    def model_dir(self) -> Path:
        return self._recognizer.model.root

    @property
    def classes(self) -> list[str]:
        """The class names of the version in use, in logit order."""
        return list(self._recognizer.class_names)

    @property
    def version(self) -> str:
        """The version in use (v0001, v0002, ...)."""
        return self._recognizer.version

    @property
    def sample_rate(self) -> int:
        """The audio rate the encoders' preprocessing takes (lite 44.1 kHz, paper 16 kHz): decode or record at it,
        as training and `avcil run` do, since audio taken at a lower rate has lost what the encoders hear above
        half of it."""
        return int(self._recognizer.audio_prep.sample_rate)

    @property
    def frame_count(self) -> int:
        """The frames per clip the visual encoder takes."""
        return int(self._recognizer.frame_prep.count)

    def predict(self, audio: np.ndarray, sample_rate: int, frames: Sequence[np.ndarray] | None = None,
                channels: str = "rgb") -> dict:
        """Decide one clip: `audio` mono (or [samples, channels]) float at `sample_rate`, `frames` uint8 images
        [H, W, 3] spread over the clip (RGB as avcil.data.decode gives them, or `channels="bgr"` for OpenCV's);
        None decides on sound alone, as `avcil run --audio-only`. The clip's audio is preprocessed as the
        training clips' was (fitted to the profile's window, `window_seconds`), its frames sampled to the count the
        encoders take (first and last included). Returns a decision line's dict: label ('unknown' under the
        threshold), score, top_k, latency_ms, model_version, ..."""
        from avcil.data.preprocess import as_mono, fit_length, sample_frame_indices
        from avcil.runtime.recognizer import decision_line
        from avcil.runtime.windows import Window

        if channels not in ("rgb", "bgr"):
            raise InvalidInput(f"channels must be 'rgb' or 'bgr', not {channels!r}")
        if not sample_rate > 0:
            raise InvalidInput(f"sample_rate must be positive, got {sample_rate}")
        started = time.perf_counter()
        waveform = as_mono(audio, "audio")
        if self._recognizer.speech is not None:
            # The lite speech stream reads its speech windows at offsets from the window's start, so it takes
            # exactly a window of samples: fitted centred, as the lite preprocessing fits a whole clip. Other
            # preprocessing fits a clip of any length itself, as it did the training clips.
            waveform = fit_length(waveform, round(self.window_seconds * sample_rate), centre=True)
        if frames is not None:
            frames = list(frames)
            count = self._recognizer.frame_prep.count
            frames = [frames[i] for i in sample_frame_indices(len(frames), count)]
            if channels == "bgr":
                frames = [np.ascontiguousarray(frame[..., ::-1]) for frame in frames]
        start = self._next_start
        end = start + len(waveform) / sample_rate
        self._next_start = end + CLIP_GAP_S
        window = Window(start, end, waveform, int(sample_rate), frames, video_missing=frames is None)
        decision = self._recognizer.decide(window)
        decision["latency_ms"]["total"] = round((time.perf_counter() - started) * 1000, 2)
        return decision_line(decision, window)

    def learn(self, label: str, files: Sequence[str | Path], *, method: str = "analytic",
              drop_suspect: bool = False, settings=None, progress: bool = False) -> dict:
        """Learn class `label` from media files, as `avcil learn --label LABEL --files ...`: the enrolment gate
        (suspect clips named on stderr; left out with `drop_suspect`), the update (`method` analytic or avcil;
        `settings`: avcil.runtime.field_settings.FieldSettings of the gradient update), a new version committed
        and used from the next `predict`. Returns the learning summary: version, parent, label, clips, method,
        encode_seconds, learn_seconds, suspect, separation, ..."""
        from avcil.runtime.learning import learn_new_class

        with self._writer() as model:
            summary, _, _ = learn_new_class(model, label, files, method=method, settings=settings,
                                            drop_suspect=drop_suspect, progress=progress)
        self._recognizer.reload()
        return summary

    def learn_background(self, files: Sequence[str | Path], *, force: bool = False, progress: bool = False) -> dict:
        """Learn media files that hold none of the classes as background, which the model answers 'unknown' to, as
        `avcil learn --background --files ...` (`force`: add files that look like a class)."""
        return self._negatives(files, None, force, progress)

    def correct(self, label: str, files: Sequence[str | Path], *, progress: bool = False) -> dict:
        """"These are not `label`": windows like the files' are 'unknown' from the new version on, as
        `avcil learn --not LABEL --files ...`."""
        return self._negatives(files, label, False, progress)

    def _negatives(self, files, not_label: str | None, force: bool, progress: bool) -> dict:
        from avcil.runtime.learning import learn_negatives

        with self._writer() as model:
            summary = learn_negatives(model, files, not_label=not_label, force=force, progress=progress)
        self._recognizer.reload()
        return summary

    def _writer(self):
        """The model dir's writer lock, waited for as `avcil learn --lock-wait` does, with the same line said."""
        from avcil.modeldir.lock import WAITING_LINE
        from avcil.runtime.learning import say

        return self._recognizer.model.writer(self.lock_wait_s, on_wait=lambda: say(WAITING_LINE))

    def reload(self) -> bool:
        """Use the model dir's current version, if another one than in use (a version committed by another
        process, a rollback); True when it changed."""
        return self._recognizer.reload()

    def close(self) -> None:
        self._recognizer.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({str(self.model_dir)!r}, version={self.version!r}, classes={self.classes!r})"
