"""The graph contract between export and the runtimes: the graphs' names, their inputs and outputs, which axes
are free, the PyTorch module behind each, and the spec file (`encoders.json`) that lists the exported files.

Export writes to it and every backend reads from it, so it sits below both (docs/architecture.md#layers, layer 3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from avcil.fileio import read_format_json
from avcil.model.head import FusionHead

ENCODERS_DIR, SPEC_FILE, REPORT_FILE = "encoders", "encoders.json", "export_report.json"
SPEC_FORMAT = 1


@dataclass(frozen=True)
class Graph:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


# The names chain: the encoders' outputs are the head's inputs.
AUDIO_GRAPH = Graph("audio", ("audio_input",), ("audio_embedding",))
VISUAL_GRAPH = Graph("visual", ("frames",), ("visual_tokens",))
# The parts of an audio encoder that a live stream runs on their own (lite: `SoundAndSpeechEncoder.stream_parts`).
STREAM_GRAPHS = {"audio_sfx": Graph("audio_sfx", ("sfx_spectrogram",), ("sfx_embedding",)),
                 "audio_sfx_columns": Graph("audio_sfx_columns", ("sfx_spectrogram",), ("sfx_columns",)),
                 "speech_window": Graph("speech_window", ("speech_samples",), ("speech_embedding",))}
# Axes besides the batch that a graph leaves free, per input and output name, and the smallest size an input's free
# axis takes (an engine's optimisation profile ranges from it to a whole window's size). aiSFX's columns take any
# number of spectrogram frames from 64 (a window's tail, avcil.runtime.sfx_stream) and give one column per 8.
TIME_AXIS = 1
FREE_AXES = {"audio_sfx_columns": {"sfx_spectrogram": {TIME_AXIS: "sfx_frames"},
                                   "sfx_columns": {TIME_AXIS: "sfx_time_columns"}}}
FREE_AXIS_MINIMUM = {"audio_sfx_columns": 64}
# A single-modality head takes only the features it uses (the exporter drops an unused input anyway).
HEAD_INPUTS = {"audio-visual": ("audio_embedding", "visual_tokens"), "audio": ("audio_embedding",),
               "visual": ("visual_tokens",)}
# Every profile's exported graphs; a lite export adds STREAM_GRAPHS. The head is not among them: the recogniser runs
# it in torch. Field learning changes the head on the device, where no export toolchain is installed, so an exported
# head would be stale after the first `avcil learn`; and it is small (0.9 ms in ONNX Runtime, 2.3 ms in torch per
# window on this CPU, against ~50 ms for the encoders: README, "On a device").
GRAPH_NAMES = ("audio", "visual")


def head_graph(modality: str = "audio-visual") -> Graph:
    return Graph("head", HEAD_INPUTS[modality], ("logits",))


class HeadLogits(nn.Module):
    """The head's inference graph: the features its modality uses, in HEAD_INPUTS order -> logits."""

    def __init__(self, head: FusionHead):
        super().__init__()
        self.head = head
        self.inputs = HEAD_INPUTS[head.config.modality]

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.inputs, features))
        return self.head(named.get("audio_embedding"), named.get("visual_tokens")).logits


FRAME_AXIS = 1  # of frames [batch, T, 3, H, W] and of visual_tokens [batch, T, S, Dv]


def dynamic_axes(spec: Graph, frames_independent: bool = False) -> dict[str, dict[int, str]]:
    """The axes of a graph's inputs and outputs that are not fixed: the batch, the frame count of the visual graph
    of a profile that encodes each frame on its own, and a graph's FREE_AXES."""
    axes = {name: {0: "batch"} for name in (*spec.inputs, *spec.outputs)}
    if frames_independent and spec.name == VISUAL_GRAPH.name:
        for name in (*spec.inputs, *spec.outputs):
            axes[name][FRAME_AXIS] = "frames"
    for name, free in FREE_AXES.get(spec.name, {}).items():
        axes[name].update(free)
    return axes


def free_axis_minimum(name: str) -> int:
    """The smallest size of graph `name`'s free input axes (the visual graph's frames: one)."""
    return FREE_AXIS_MINIMUM.get(name, 1)


def graph_modules(profile, head: FusionHead | None = None
                  ) -> dict[str, tuple[nn.Module, Graph, list[tuple[int, ...]]]]:
    """Per graph name: the PyTorch module, its I/O names and its input shapes without the batch dimension. The
    encoders' graphs, and the head's when one is given (the latency benchmark times it in every backend)."""
    modules = {"audio": (profile.audio, AUDIO_GRAPH, [tuple(profile.audio_input_shape)]),
               "visual": (profile.visual, VISUAL_GRAPH, [tuple(profile.visual_input_shape)])}
    if head is not None:
        features = {"audio_embedding": (profile.shape.audio_dim,), "visual_tokens": profile.shape.visual}
        spec = head_graph(head.config.modality)
        modules["head"] = (HeadLogits(head).eval(), spec, [features[name] for name in spec.inputs])
    parts = getattr(profile.audio, "stream_parts", None)
    for name, (module, input_shape) in (parts() if parts else {}).items():
        modules[name] = (module, STREAM_GRAPHS[name], [tuple(input_shape)])
    return modules


def read_spec(folder: Path) -> dict:
    path = Path(folder) / SPEC_FILE
    return read_format_json(path, SPEC_FORMAT, f"{path}: no exported encoders here (run `avcil export --model DIR "
                                               f"--format onnx`)")
