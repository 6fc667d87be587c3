"""An encoder profile: the two frozen encoders of a clip and the preprocessing that feeds them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from avcil.errors import InvalidInput
from avcil.data.preprocess import AudioPreprocess, FramePreprocess
from avcil.features import Features, FeatureShape
from avcil.fileio import sha256_file

# Bumped when a profile's encoders change what they compute (not just their weights file): a model dir or feature
# store records the version it was made with, and one of another version is refused (avcil.model.encoders).
# lite 1: aiSFX 512 + EfficientNet-Lite0 head map 8 x 49 x 1280. lite 2: see avcil/model/encoders/lite.py.
PROFILE_VERSIONS = {"lite": 2, "paper": 1, "tiny": 1}


def recorded_version(record: dict) -> int:
    """The profile version a manifest or store records; records from before versions existed are version 1."""
    return int(record.get("version", 1))


# The paper's extraction: 11,430 Hz and no AudioMAE input normalisation (docs/method.md#the-paper-encoders). AudioMAE's
# own recipe is 16,000 Hz with normalisation; both are settings of load_profile('paper', ...). Here rather than in
# paper.py, so that the command line can name the defaults without importing transformers.
PAPER_SAMPLE_RATE = 11430
PAPER_NORMALIZE = False


class ProfileMismatch(InvalidInput):
    """Features, a head or exported encoders made with another encoder profile (or version) than these."""


def weights_record(path: str | Path) -> dict:
    """How a manifest names a weights file: its name and sha256 (not its folder, so that moving it keeps the
    identity)."""
    return {"file": Path(path).name, "sha256": sha256_file(path)}


def frozen(module: nn.Module) -> nn.Module:
    """Inference mode for good: eval() and no gradients."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


@dataclass
class EncoderProfile:
    """Frozen audio and visual encoders with their preprocessing.

    `audio`: preprocessed audio [B, *audio_input_shape] float32 -> [B, audio_dim].
    `visual`: preprocessed frames [B, *visual_input_shape] float32 -> [B, time, positions, visual_dim].
    Both are plain nn.Modules that trace and export to ONNX with a dynamic batch; preprocessing stays in numpy.
    `frames_independent`: the visual encoder encodes each frame on its own (a 2-D CNN, not a video transformer), so
    it takes any number of frames and a live window needs only its newest frame encoded.
    """

    name: str
    shape: FeatureShape
    audio: nn.Module
    visual: nn.Module
    audio_prep: AudioPreprocess
    frame_prep: FramePreprocess
    weights: dict  # per encoder: {'file', 'sha256'} of the weights, or how random ones were made
    frames_independent: bool = False
    version: int | None = None  # of the profile's design (default: PROFILE_VERSIONS); versions never mix
    # The encoders as another runtime runs them, {'audio': backend, 'visual': backend}, which encode_batch uses in
    # place of the modules: set by avcil.export.cached.use_onnxruntime for bulk encoding on a CPU.
    runtime: dict | None = None
    # How many encoder calls bulk encoding keeps in flight: one per torch thread where `runtime`'s sessions each run
    # one thread (set with it), else 1.
    concurrent_calls: int = 1

    def __post_init__(self) -> None:
        if self.version is None:
            self.version = PROFILE_VERSIONS.get(self.name, 1)
        frozen(self.audio)
        frozen(self.visual)

    @property
    def audio_input_shape(self) -> tuple[int, ...]:
        return self.audio_prep.input_shape

    @property
    def visual_input_shape(self) -> tuple[int, ...]:
        return self.frame_prep.input_shape

    @property
    def settings(self) -> dict:
        """Everything a manifest or feature store records to reproduce these features."""
        return {"audio": self.audio_prep.to_dict(), "visual": self.frame_prep.to_dict(), "weights": self.weights}

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "shape": self.shape.to_dict(),
                "settings": self.settings}

    def preprocess_audio(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float waveform at any rate -> float32 `audio_input_shape`."""
        return self.audio_prep(waveform, sample_rate)

    def preprocess_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 frames [H, W, 3], already sampled (`frame_prep.count` of them) -> float32 `visual_input_shape`."""
        return self.frame_prep(frames)

    def clip_inputs(self, waveform: np.ndarray, sample_rate: int,
                    frames: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """A decoded file or a recorded window (waveform at any rate, `frame_prep.count` RGB frames) -> the
        encoders' inputs (audio, visual)."""
        return self.preprocess_audio(waveform, sample_rate), self.preprocess_frames(frames)

    def file_inputs(self, path: str | Path, missing_audio: str = "error",
                    on_decoded=None) -> tuple[np.ndarray, np.ndarray, bool]:
        """A media file -> the encoders' inputs and whether a missing audio track was replaced by silence. The one
        way from a file to encoder inputs: extraction, field learning, export validation and int8 calibration all
        decode through here, so they see the same frames and samples. `on_decoded(path, clip)` is given the decoded
        clip (avcil.data.decode.DecodedClip) before it is preprocessed: its raw sound and frames, without decoding
        the file twice."""
        from avcil.data.decode import decode_clip

        clip = decode_clip(path, self.frame_prep.count, self.audio_prep.sample_rate, missing_audio)
        if on_decoded is not None:
            on_decoded(path, clip)
        return (*self.clip_inputs(clip.waveform, clip.sample_rate, clip.frames), clip.silent_fallback)

    def encode_files(self, paths: Sequence[str | Path], batch_size: int | None = None, progress: bool = True,
                     on_decoded=None) -> tuple[np.ndarray, np.ndarray]:
        """Audio [n, Da] and visual [n, T, S, Dv] features of media files, `batch_size` clips per forward (default:
        `bulk_batch_size`); `on_decoded(path, clip)` for each file in order, as `file_inputs` calls it."""
        return self.encode_each([Path(p) for p in paths],
                                lambda path: [self.file_inputs(path, on_decoded=on_decoded)[:2]], batch_size, progress,
                                "encode clips")

    def encode_each(self, items: Sequence, inputs_of, batch_size: int | None = None, progress: bool = True,
                    what: str = "encode", total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Audio and visual features of every (audio, visual) encoder input pair that `inputs_of(item)` lists, item
        after item: prepared on a thread ahead of the encoders (`inputs_of` is called in the items' order),
        `batch_size` pairs a forward, `concurrent_calls` forwards at a time (avcil.model.encoders.pipeline); in a
        process held to one thread (`avcil learn`'s default), one after the other on this one.
        `total`: how many pairs there will be, for the progress bar (default: one an item)."""
        import sys

        from tqdm import tqdm

        from avcil.model.encoders.pipeline import pipelined

        audio, visual = [], []
        with tqdm(total=len(items) if total is None else total, desc=what, unit="clip", disable=not progress,
                  file=sys.stderr) as bar:
            ahead = 1 if torch.get_num_threads() > 1 else 0
            for a, v in pipelined(items, inputs_of, self._encode_pairs, batch_size or self.bulk_batch_size, ahead,
                                  self.concurrent_calls):
                audio.append(a)
                visual.append(v)
                bar.update(len(a))
        if not audio:
            raise InvalidInput("nothing to encode: no clips given")
        return np.concatenate(audio), np.concatenate(visual)

    @property
    def bulk_batch_size(self) -> int:
        """Clips a forward when encoding many: 2 on a CPU, where larger batches of 224² frames run slower per frame;
        16 on a GPU."""
        return 16 if next(self.visual.parameters()).device.type != "cpu" else 2

    def _encode_pairs(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_batch(*(np.stack(part) for part in zip(*pairs)))

    def to(self, device: str | torch.device) -> "EncoderProfile":
        """Move both encoders (e.g. to 'cuda' for extraction); encode_batch follows them, in torch."""
        self.audio.to(device)
        self.visual.to(device)
        self.runtime = None
        self.concurrent_calls = 1
        return self

    @torch.inference_mode()
    def encode_batch(self, audio_inputs: np.ndarray, visual_inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed batches -> float32 audio [B, audio_dim] and visual [B, time, positions, visual_dim]."""
        if self.runtime is not None:
            return self.runtime["audio"](audio_inputs)[0], self.runtime["visual"](visual_inputs)[0]
        outputs = []
        for module, inputs in ((self.audio, audio_inputs), (self.visual, visual_inputs)):
            device = next(module.parameters()).device
            batch = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).to(device)
            outputs.append(module(batch).float().cpu().numpy())
        return outputs[0], outputs[1]

    def encode(self, waveform: np.ndarray, sample_rate: int, frames: Sequence[np.ndarray]) -> Features:
        """One clip, end to end."""
        audio, visual = self.encode_batch(*(x[None] for x in self.clip_inputs(waveform, sample_rate, frames)))
        return Features(audio=audio[0], visual=visual[0])
