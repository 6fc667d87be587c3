"""Linear probes of the lite profile's encoder options on AV-Digits: which features carry the digit, per modality,
and what each visual option costs per frame.

    avcil bench probes [--visual lite0-224-head,lite0-224-b11,...] [--out-dir benchmarks/results]

Every clip of the AV-Digits build is decoded once; each option's encoder runs in ONNX Runtime (exported from the
PyTorch module, as the runtime runs it); a clip's features are pooled to one vector (audio as the encoder gives it;
visual tokens mean + max over frames and positions), standardised, and a logistic regression is fitted on the train
split and scored on the test split. Writes lite-probes.{json,md,png} with the accuracy of every option and combination
and the ms per frame (visual) or per window (audio) at batch 1 on this machine's threads, and the load average
around the run (the numbers are only comparable within one run on a busy machine).
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from avcil.bench.report import DEFAULT_DIR, machine, markdown_table, write_report

ITERATIONS = 15


@dataclass(frozen=True)
class VisualOption:
    name: str
    model: str  # key of avcil.model.encoders.lite.EFFICIENTNETS
    size: int
    blocks: int | None  # feature map after this many MBConv blocks; None: after the head convolution
    imagenet_norm: bool = False  # ImageNet mean/std instead of EfficientNet-Lite's (x - 127) / 128


# Lite0's blocks: 0-10 end at 14x14 or larger (80 channels after 8, 112 after 11), 11-15 at 7x7 (320 after 16).
VISUAL_OPTIONS = {o.name: o for o in [
    VisualOption("lite0-224-head", "efficientnet-lite0", 224, None),
    VisualOption("lite0-224-b16", "efficientnet-lite0", 224, 16),
    VisualOption("lite0-224-b11", "efficientnet-lite0", 224, 11),
    VisualOption("lite0-224-b8", "efficientnet-lite0", 224, 8),
    VisualOption("lite0-160-b11", "efficientnet-lite0", 160, 11),
    VisualOption("lite0-320-b11", "efficientnet-lite0", 320, 11),
    VisualOption("lite0-224-b11-imagenet", "efficientnet-lite0", 224, 11, imagenet_norm=True),
    VisualOption("lite2-260-head", "efficientnet-lite2", 260, None),
    VisualOption("lite2-260-b13", "efficientnet-lite2", 260, 13),
]}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def onnx_runner(module: nn.Module, example: torch.Tensor, folder: Path, name: str, frames: bool = False) -> Callable:
    """`module` exported to ONNX and opened in ONNX Runtime (the runtime's own backend); `frames`: axis 1 of the
    input and output is free too (a frame-by-frame visual encoder)."""
    from avcil.export.onnx import export_graph
    from avcil.model.graphs import Graph, dynamic_axes
    from avcil.backends import load_backend

    path = folder / f"{name}.onnx"
    graph = Graph("visual" if frames else name, ("x",), ("y",))
    export_graph(module.eval(), [example], path, graph, dynamic=dynamic_axes(graph, frames))
    backend = load_backend(path, "onnxruntime")
    return lambda x: backend(x)[0]


def ms_per_call(run: Callable, example: np.ndarray) -> float:
    run(example)
    times = []
    for _ in range(ITERATIONS):
        start = time.perf_counter()
        run(example)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def decode_all(clips_csv: Path, frame_count: int, rate: int) -> tuple[list[dict], list[np.ndarray]]:
    from avcil.data.decode import decode_clip

    rows = list(csv.DictReader(open(clips_csv)))
    clips = [decode_clip(clips_csv.parent / r["path"], frame_count, rate)
             for r in tqdm(rows, desc="decode", unit="clip")]
    return rows, clips


def _model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))


def probe(features: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> float:
    """Logistic regression on standardised features, train split -> test split accuracy."""
    train, test = splits == "train", splits == "test"
    return float(_model().fit(features[train], labels[train]).score(features[test], labels[test]))


def probe_5fold(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean accuracy over 5 stratified folds of all clips: less noisy than the 120 test clips, but folds share
    speakers and handwriting between train and test (the splits do not), so higher than the test split."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(_model(), features, labels, cv=folds).mean())


def scores(features: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> dict:
    return {"test_accuracy": probe(features, labels, splits), "five_fold_accuracy": probe_5fold(features, labels)}


def frame_encoder(option: VisualOption) -> nn.Module:
    from avcil.model.encoders.lite import EfficientNetMap, FrameCNNEncoder, efficientnet

    cnn, _ = efficientnet(option.model, option.size)
    return FrameCNNEncoder(EfficientNetMap(cnn, option.blocks), option.size).eval()


def gflop_per_frame(option: VisualOption) -> float:
    """FLOPs of one frame (as avcil bench latency counts them): a cost that a busy machine does not blur."""
    from avcil.bench.latency import count_flops

    return count_flops(frame_encoder(option), [np.zeros((1, 1, 3, option.size, option.size), np.float32)]) / 1e9


def visual_features(option: VisualOption, clips, folder: Path) -> tuple[np.ndarray, dict]:
    from avcil.data.preprocess import FramePreprocess
    from avcil.model.encoders.lite import LITE_MEAN, LITE_STD

    encoder = frame_encoder(option)
    mean, std = IMAGENET if option.imagenet_norm else (LITE_MEAN, LITE_STD)
    prep = FramePreprocess(count=len(clips[0].frames), size=option.size, mean=mean, std=std)
    run = onnx_runner(encoder, torch.zeros(1, 1, 3, option.size, option.size), folder, "visual", frames=True)
    pooled = []
    for clip in tqdm(clips, desc=option.name, unit="clip"):
        tokens = run(prep(clip.frames)[None])[0]  # [T, S, C]
        pooled.append(np.concatenate([tokens.mean(axis=(0, 1)), tokens.max(axis=(0, 1))]))
    info = {"tokens": [prep.count, encoder.positions, encoder.channels],
            "ms_per_frame": ms_per_call(run, np.zeros((1, 1, 3, option.size, option.size), np.float32))}
    return np.stack(pooled), info


def audio_features(clips, folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Per clip: aiSFX [512] and the speech embedding's windows [W, 96] (every 80 ms), from one window."""
    from avcil.model.encoders.lite import load_lite_audio

    audio, prep, _ = load_lite_audio()
    sfx_run = onnx_runner(audio.sfx, torch.zeros(1, *audio.sfx_shape), folder, "sfx")
    speech_run = onnx_runner(audio.speech, torch.zeros(1, audio.speech_samples), folder, "speech")
    sfx, speech = [], []
    for clip in tqdm(clips, desc="audio", unit="clip"):
        sfx_input, speech_input = audio.unpack(prep(clip.waveform, clip.sample_rate)[None])
        sfx.append(sfx_run(sfx_input)[0])
        speech.append(speech_run(speech_input)[0])
    timing = {"sfx_ms_per_window": ms_per_call(sfx_run, np.zeros((1, *audio.sfx_shape), np.float32)),
              "speech_ms_per_window": ms_per_call(speech_run, np.zeros((1, audio.speech_samples), np.float32))}
    return {"sfx": np.stack(sfx), "speech": np.stack(speech)}, timing


def speech_pooled(windows: np.ndarray, hop: int = 1) -> np.ndarray:
    """Mean + max over every `hop`-th embedding window (hop 1: every 80 ms)."""
    chosen = windows[:, ::hop]
    return np.concatenate([chosen.mean(axis=1), chosen.max(axis=1)], axis=1)


def cached(cache: Path | None, name: str, compute: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
    """compute() -> (arrays, info), kept in cache/name.npz so that a rerun with more options reuses features."""
    import json

    path = cache / f"{name}.npz" if cache else None
    if path is not None and path.is_file():
        stored = np.load(path)
        return ({k: stored[k] for k in stored.files if k != "info"}, json.loads(str(stored["info"])))
    arrays, info = compute()
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, info=json.dumps(info), **arrays)
    return arrays, info


def run_probes(clips_csv: Path, visual_names: list[str], frame_count: int = 8, cache: Path | None = None) -> dict:
    from avcil.model.encoders.lite import AUDIO_RATE

    load = [os.getloadavg()[0]]
    rows, clips = decode_all(clips_csv, frame_count, AUDIO_RATE)
    labels = np.array([r["label"] for r in rows])
    splits = np.array([r["split"] for r in rows])
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        audio, timing = cached(cache, "audio", lambda: audio_features(clips, Path(tmp)))
        load.append(os.getloadavg()[0])
        sets = {"audio: aisfx": audio["sfx"]}
        for hop in (1, 2, 3):
            sets[f"audio: speech mean+max (every {80 * hop} ms)"] = speech_pooled(audio["speech"], hop)
        sets["audio: speech mean (every 80 ms)"] = audio["speech"].mean(axis=1)
        speech = speech_pooled(audio["speech"])
        sets["audio: aisfx + speech (every 80 ms)"] = np.concatenate([audio["sfx"], speech], axis=1)
        for name, features in sets.items():
            results.append({"features": name, "dim": features.shape[1], **scores(features, labels, splits)})
        both_audio = sets["audio: aisfx + speech (every 80 ms)"]
        for name in visual_names:
            option = VISUAL_OPTIONS[name]
            arrays, info = cached(cache, f"visual-{name}",
                                  lambda: ({"pooled": (r := visual_features(option, clips, Path(tmp)))[0]}, r[1]))
            visual = arrays["pooled"]
            load.append(os.getloadavg()[0])
            info["gflop_per_frame"] = gflop_per_frame(option)
            results.append({"features": f"visual: {name}", "dim": visual.shape[1], **info,
                            **scores(visual, labels, splits)})
            combined = np.concatenate([both_audio, visual], axis=1)
            results.append({"features": f"all: aisfx + speech + {name}", "dim": combined.shape[1],
                            **scores(combined, labels, splits)})
    return {"clips": str(clips_csv), "frames_per_clip": frame_count, "train_clips": int((splits == "train").sum()),
            "test_clips": int((splits == "test").sum()), "audio_timing": timing, "results": results,
            "load_average_1min": load, "iterations": ITERATIONS, "runtime": "onnxruntime (CPU)"}


def describe(payload: dict) -> str:
    timing = payload["audio_timing"]
    table = markdown_table(payload["results"], [("features", "features"), ("dim", "pooled dim"),
                                                ("tokens", "tokens T,S,Dv"), ("gflop_per_frame", "GFLOP / frame"),
                                                ("ms_per_frame", "ms / frame"),
                                                ("test_accuracy", "test accuracy"),
                                                ("five_fold_accuracy", "5-fold accuracy")])
    return (f"Logistic regression on standardised pooled features, {payload['train_clips']} train -> "
            f"{payload['test_clips']} test clips; visual tokens pooled mean + max over {payload['frames_per_clip']} "
            f"frames and all positions. ONNX Runtime, batch 1, {machine()['threads']} threads, median of "
            f"{payload['iterations']}; 1-min load average during the run: "
            f"{', '.join(f'{x:.1f}' for x in payload['load_average_1min'])}.\n\n{table}\n"
            f"Audio per window: aiSFX {timing['sfx_ms_per_window']:.1f} ms, speech embedding (all windows every "
            f"80 ms) {timing['speech_ms_per_window']:.1f} ms. ms are from a shared machine (see the load); GFLOP "
            f"are counted on the PyTorch modules. 5-fold: all 600 clips in 5 stratified folds (folds share "
            f"speakers and handwriting, the splits do not).\n\nThe profile keeps lite0-224-b16 (7 x 7 x 320): see "
            f"avcil/model/encoders/lite.py for why.\n\nRerun: `avcil bench probes` (add `--cache DIR` to "
            f"keep features between runs).\n")


def plot(payload: dict, path: Path) -> None:
    """Test and 5-fold accuracy of every option and combination, one bar pair each."""
    from avcil.train.plots import plt

    rows = payload["results"]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    for offset, key in ((-0.2, "test_accuracy"), (0.2, "five_fold_accuracy")):
        ax.barh([i + offset for i in range(len(rows))], [r.get(key) or 0 for r in rows], 0.4,
                label=key.replace("_", " "))
    ax.set(yticks=range(len(rows)), yticklabels=[r["features"] for r in rows], xlabel="linear probe accuracy",
           xlim=(0, 1))
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from avcil.data.avdigits import build_av_digits
    from avcil.fileio import default_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    clips_csv = build_av_digits(default_cache() / "av-digits")
    payload = run_probes(Path(clips_csv), [n for n in args.visual.split(",") if n], cache=args.cache)
    text = describe(payload)
    write_report(args.out_dir, "lite-probes", payload, text, "Linear probes of the lite encoders on AV-Digits",
                 lambda path: plot(payload, path))
    print(text)
    return 0


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--visual", default=",".join(VISUAL_OPTIONS),
                        help=f"comma-separated visual options (default all: {', '.join(VISUAL_OPTIONS)})")
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep each option's pooled features here, so that a rerun only computes new options")
