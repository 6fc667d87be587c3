"""What live windows see of a clip file: the windows a live run would cut around it, for learning background.

`avcil run` cuts fixed windows (3 s for lite) at a fixed hop wherever an event happens to fall, so an event of 2 s
sits off-centre in a window, partly in the next one, with whatever came before and after around it. Background is
learnt from these views, since it is what the live path will see between events. Classes are not: every class of a
model is learnt from whole clips, and one class learnt from window views among them draws live windows of the others
to it (docs/decision.md). `window_views` plays a file through
the replay sources (avcil.runtime.replay: the paced file sources' frames and audio blocks, the live window assembly)
and cuts `views` windows whose ends spread from the one that holds the first 3/4 of the clip to the one that holds
its last 3/4; a file longer than a window gives windows spread over it. Before and after the file the window holds
what a file source gives there: silence and its first or last frame.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from avcil.runtime.replay import ReplayInput
from avcil.runtime.windows import WINDOW_CUT_VERSION, Window, window_seconds

DEFAULT_VIEWS = 5
HELD_SHARE = 0.75  # the outermost views hold this share of a clip shorter than a window


def view_ends(duration: float, seconds: float, views: int) -> np.ndarray:
    """Window ends (from the file's start) of `views` windows of `seconds` over a file of `duration` seconds."""
    if duration <= seconds:
        return np.linspace(HELD_SHARE * duration, seconds + (1 - HELD_SHARE) * duration, views)
    return np.linspace(seconds, duration, views)


def window_views(path: str | Path, profile, views: int = DEFAULT_VIEWS) -> list[Window]:
    """The `views` live windows of one media file, for the profile's window and preprocessing."""
    seconds = window_seconds(profile.audio_prep)
    source = ReplayInput(str(path), str(path), profile.audio_prep.sample_rate, seconds, seconds, profile.frame_prep)
    return [source.window(end) for end in view_ends(source.audio_seconds, seconds, views)]


def encode_window_views(profile, paths: Sequence[str | Path], views: int = DEFAULT_VIEWS,
                        batch_size: int | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Audio [n * views, Da] and visual [n * views, T, S, Dv] features of the live windows of media files."""
    from avcil.data.decode import decode_clip

    def inputs_of(path) -> list[tuple[np.ndarray, np.ndarray]]:
        decode_clip(path, profile.frame_prep.count, profile.audio_prep.sample_rate)  # a damaged file: one clear error
        return [profile.clip_inputs(w.waveform, w.rate, w.frames) for w in window_views(path, profile, views)]

    return profile.encode_each(list(paths), inputs_of, batch_size, progress, "live windows", len(paths) * views)


def cached_window_views(profile, paths: list[Path], folder: Path) -> tuple[dict, bool]:
    """({audio, visual}: the window views (what `learn --background` learns), {probe_audio, probe_visual}: the
    whole-clip features (what its guard checks)) of media files, and whether they were read back: cached in
    `folder` per encoder profile and file set, for clips that cost minutes to encode and never change."""
    key = hashlib.sha256(json.dumps([profile.describe(), [p.name for p in paths], [p.stat().st_size for p in paths],
                                     DEFAULT_VIEWS, WINDOW_CUT_VERSION], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = folder / f"{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}, True
    audio, visual = encode_window_views(profile, paths, progress=False)
    probe_audio, probe_visual = profile.encode_files(paths, progress=False)
    features = {"audio": audio, "visual": visual, "probe_audio": probe_audio, "probe_visual": probe_visual}
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **features)
    partial.replace(path)  # a killed run leaves no half-written cache behind
    return features, False
