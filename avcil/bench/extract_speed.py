"""Feature extraction from video files (`avcil extract`), split into its two halves so that a run says which one
bounds it: decoding and preprocessing (OpenCV frames, ffmpeg audio, numpy, in `workers` threads, as extract runs
them) and encoding (one forward of both encoders per batch, copies included, as extract calls them), then the
whole of extract on the same files."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avcil.bench.encoder_speed import time_call
from avcil.bench.latency import summarise
from avcil.errors import StageFailed


@dataclass(frozen=True)
class ClipSpec:
    """The files extraction reads: AVE's clips are 10 s; 640x360 at 25 fps is a common size of theirs."""
    count: int = 96
    seconds: float = 10.0
    size: str = "640x360"
    fps: int = 25
    sample_rate: int = 44100


def make_clips(folder: Path, spec: ClipSpec) -> Path:
    """`spec.count` copies of one clip (a moving test pattern over a tone, MPEG-4 + AAC) in the one class folder
    extract lists; copies decode exactly as the original does, and only one needs encoding."""
    videos = folder / "videos"
    (videos / "clip").mkdir(parents=True, exist_ok=True)
    first = videos / "clip" / "000.mp4"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y",
               "-f", "lavfi", "-i", f"testsrc2=size={spec.size}:rate={spec.fps}:duration={spec.seconds}",
               "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={spec.sample_rate}:duration={spec.seconds}",
               "-c:v", "mpeg4", "-q:v", "4", "-c:a", "aac", "-shortest", str(first)]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    except FileNotFoundError as error:
        raise StageFailed("ffmpeg is not on PATH: extraction decodes audio with it (scripts/gpu-wheels.sh ffmpeg "
                          "ships one)") from error
    except subprocess.CalledProcessError as error:
        raise StageFailed(f"ffmpeg could not write the test clip: {error.stderr.decode(errors='replace')[-300:]}")
    for i in range(1, spec.count):
        shutil.copyfile(first, videos / "clip" / f"{i:03d}.mp4")
    return videos


def _decode(profile, paths: list[Path], workers: int) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """Every file through `profile.file_inputs` in `workers` threads: per-clip seconds, clips/s over the wall
    time, and the encoder inputs."""
    def one(path):
        start = time.perf_counter()
        audio, visual, _ = profile.file_inputs(path)
        return time.perf_counter() - start, (audio, visual)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(one, paths))
    wall = time.perf_counter() - start
    timing = summarise([seconds for seconds, _ in done])
    return ({"path": "decode", "p50_ms": timing["p50_ms"], "p95_ms": timing["p95_ms"], "clips": len(paths),
             "workers": workers, "clips_per_s": len(paths) / wall},
            [inputs for _, inputs in done])


def measure(profile, videos: Path, batch: int, workers: int, device: str, warmup: int, iterations: int) -> list[dict]:
    """Rows `decode`, `encode` and `pipeline` (extract itself, into a scratch store); the pipeline row names the
    half that bounds it (the one with fewer clips/s) and how close extract comes to it."""
    from avcil.train.extract import extract, list_clips

    profile.to(device)
    paths = [entry.path for entry in list_clips(videos)]
    decode, inputs = _decode(profile, paths, workers)
    audio, visual = (np.stack(part) for part in zip(*inputs[:batch]))
    timing = summarise(time_call(lambda: profile.encode_batch(audio, visual), warmup, iterations,
                                 device.startswith("cuda")))
    encode = {"path": "encode", "p50_ms": timing["p50_ms"], "p95_ms": timing["p95_ms"],
              "clips_per_s": len(audio) / (timing["p50_ms"] / 1e3)}
    with tempfile.TemporaryDirectory(prefix="avcil-extract-speed-") as store:
        summary = extract(videos, Path(store) / "features", profile=profile, batch_size=batch, workers=workers,
                          progress=False)
    bound = min((decode, encode), key=lambda row: row["clips_per_s"])
    pipeline = {"path": "pipeline", "p50_ms": None, "p95_ms": None, "clips": summary["extracted"],
                "workers": workers, "clips_per_s": summary["clips_per_second"], "bound_by": bound["path"],
                "share_of_bound": summary["clips_per_second"] / bound["clips_per_s"]}
    return [decode, encode, pipeline]
