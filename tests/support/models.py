"""Models for the tests: the toy model trained with the tiny profile, small model dirs and heads made in a second,
AudioMAE checkpoints of random weights, an export through the command line, and the closed-form readout in numpy.
avcil and torch are imported where used, so that conftest.py stays light to import."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Model dirs of small_model: features far smaller than any profile's.
FEATURES = {"shape": {"audio_dim": 5, "time": 2, "positions": 3, "visual_dim": 4}, "profile": None}
# A small AudioMAE: fbank 64 x 32 in 16x16 patches -> 8 tokens + cls.
SMALL = dict(frames=64, mel_bins=32, hidden=32, layers=2, heads=4, mlp=64)


def train_toy_model(model_dir: Path, profile, clips: dict[str, list[Path]], names: list[str], epochs: int = 150,
                    memory_budget: int = 12, method: str = "avcil") -> Path:
    """A model dir with the tiny profile's features of `names` learnt in one step by `method`."""
    from avcil.data.clips import ArrayClipSet, Benchmark
    from avcil.modeldir import ModelDir
    from avcil.train.learner import TrainConfig
    from avcil.train.methods import build_method
    from avcil.train.protocol import run_protocol

    paths = [p for n in names for p in clips[n]]
    labels = np.array([i for i, n in enumerate(names) for _ in clips[n]])
    audio, visual = profile.encode_files(paths, progress=False)
    data = ArrayClipSet([str(p) for p in paths], labels, audio, visual)
    # No validation clips: the learner then keeps the last epoch, not the first that fits the training clips.
    no_val = ArrayClipSet([], np.zeros(0), audio[:0], visual[:0])
    benchmark = Benchmark("toy", names, [list(range(len(names)))], {"train": data, "val": no_val, "test": data},
                          data.shape)
    outcome = run_protocol(benchmark, build_method(method), TrainConfig(epochs=epochs, lr=3e-3, batch_size=16,
                           exemplar_batch_size=16), memory_budget, fusion_dim=32, progress=False)
    ModelDir(model_dir).commit(outcome.head, outcome.memory, [{"name": n, "step": 0} for n in names],
                               {"shape": data.shape.to_dict(), "profile": profile.describe()},
                               extra={"training": {"method": outcome.results["config"]["method"]}})  # as write_run
    return model_dir


def small_model(classes=3, budget=6):
    """(head, exemplar memory, class entries) of `classes` classes c0, c1, ... over FEATURES' shape, seeded."""
    import torch

    from avcil.data.clips import ArrayClipSet
    from avcil.model.head import FusionHead, HeadConfig
    from avcil.model.memory import ExemplarMemory

    torch.manual_seed(0)
    head = FusionHead(HeadConfig(5, 4, 6), num_classes=classes)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 4)
    clips = ArrayClipSet([f"x{i}" for i in range(len(labels))], labels,
                         rng.normal(size=(len(labels), 5)).astype(np.float32),
                         rng.normal(size=(len(labels), 2, 3, 4)).astype(np.float32))
    memory = ExemplarMemory(budget)
    memory.update(clips, {c: np.flatnonzero(labels == c) for c in range(classes)})
    return head, memory, [{"name": f"c{c}", "step": 0} for c in range(classes)]


def commit_model(root, profile, classes=3, modality="audio-visual"):
    """Commit a seeded head of `classes` classes (no exemplars) for `profile` to the model dir `root`; returns it."""
    import torch

    from avcil.model.head import FusionHead, HeadConfig
    from avcil.modeldir import ModelDir

    torch.manual_seed(1)
    head = FusionHead(HeadConfig.for_shape(profile.shape, modality=modality), num_classes=classes)
    ModelDir(root).commit(head, None, [{"name": f"c{i}", "step": 0} for i in range(classes)],
                          {"shape": profile.shape.to_dict(), "profile": profile.describe()})
    return head


def run_export(argv):
    """`avcil export ARGV` through its own parser, in process; returns its exit code."""
    import argparse

    from avcil.export import command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def timm_audiomae_state(frames, mel_bins, hidden, layers, heads, mlp, finetuned: bool, seed: int = 0) -> dict:
    """Random weights in AudioMAE's published key layout: a pretrained MAE (encoder `norm` + decoder) or a
    finetuned global-pool classifier (`fc_norm` + `head`)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    tokens = 1 + (frames // 16) * (mel_bins // 16)
    state = {"cls_token": rand(1, 1, hidden), "pos_embed": rand(1, tokens, hidden),
             "patch_embed.proj.weight": rand(hidden, 1, 16, 16), "patch_embed.proj.bias": rand(hidden)}
    for i in range(layers):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + rand(hidden), b + "norm1.bias": rand(hidden),
                      b + "attn.qkv.weight": rand(3 * hidden, hidden), b + "attn.qkv.bias": rand(3 * hidden),
                      b + "attn.proj.weight": rand(hidden, hidden), b + "attn.proj.bias": rand(hidden),
                      b + "norm2.weight": 1 + rand(hidden), b + "norm2.bias": rand(hidden),
                      b + "mlp.fc1.weight": rand(mlp, hidden), b + "mlp.fc1.bias": rand(mlp),
                      b + "mlp.fc2.weight": rand(hidden, mlp), b + "mlp.fc2.bias": rand(hidden)})
    if finetuned:
        state.update({"fc_norm.weight": 1 + rand(hidden), "fc_norm.bias": rand(hidden),
                      "head.weight": rand(527, hidden), "head.bias": rand(527)})
    else:
        state.update({"norm.weight": 1 + rand(hidden), "norm.bias": rand(hidden), "mask_token": rand(1, 1, hidden),
                      "decoder_embed.weight": rand(16, hidden), "decoder_blocks.0.norm1.weight": rand(16),
                      "decoder_pos_embed": rand(1, tokens, 16), "decoder_pred.weight": rand(256, 16)})
    return state


def save_checkpoint(path: Path, state: dict, wrap: str = "module.") -> Path:
    """`state` saved as AudioMAE's checkpoints are: under 'model', each key prefixed by `wrap`."""
    import torch

    torch.save({"model": {wrap + k: v for k, v in state.items()}}, path)
    return path


def ridge_solution(standard: np.ndarray, labels: np.ndarray, expand: np.ndarray, ridge: float, classes: int):
    """The joint least-squares solution over all these (standardised) clips at once, in numpy."""
    phi = np.maximum(standard @ expand.astype(np.float64), 0)
    gram = phi.T @ phi
    return np.linalg.solve(gram + ridge * np.mean(np.diag(gram)) * np.eye(len(gram)), phi.T @ np.eye(classes)[labels])


def joint_solution(readout, inputs, labels: np.ndarray) -> np.ndarray:
    """What one fit over every clip gives, with the readout's own (base-step) standardisation and expansion."""
    standard = ((inputs.double() - readout.shift.double()) / readout.spread.double()).numpy()
    return ridge_solution(standard, labels, readout.expand.numpy(), readout.spec["ridge"], readout.num_classes)


class HostilePickle:
    """Unpickling this runs a shell command that leaves the file `marker`: what a malicious checkpoint or release
    could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)
