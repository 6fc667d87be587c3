"""`avcil bench speed` (avcil/bench/speed.py): each part measures the work it names on real clips, and the report
shows every part for each backend."""

from __future__ import annotations

import json

import pytest

from avcil.bench import speed
from support.media import TOY_CLASSES, make_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One 3 s clip per toy class at the lite profile's audio rate, listed in a path,label,split CSV."""
    root = tmp_path_factory.mktemp("speed-clips")
    paths = [make_clip(root / f"{name}.mp4", colour, tone, seconds=3.0, rate=44100, size="160x120")
             for name, (colour, tone) in TOY_CLASSES.items()]
    (root / "clips.csv").write_text("path,label,split\n" + "".join(f"{p.name},{p.stem},train\n" for p in paths))
    return paths


def test_each_part_measures_the_clips_it_was_given(clips, tmp_path, monkeypatch):
    monkeypatch.setenv("AVCIL_CACHE", str(tmp_path / "cache"))
    extracted = speed.extraction(clips[0].parent / "clips.csv", 2, "onnxruntime", tmp_path)
    assert extracted["clips"] == 2 and extracted["clips_per_s"] > extracted["clips_per_s_with_start_up"] > 0
    assert (tmp_path / "cache" / "onnx").is_dir()  # the encoders ran in ONNX Runtime, exported into the cache
    field = speed.field_encoding(clips, "torch")
    assert field["clips"] == len(clips) and field["clips_per_s"] == pytest.approx(
        len(clips) / field["encode_seconds"], rel=0.05)
    replayed = speed.replay_speed(clips, "torch", tmp_path)
    # Three 3 s clips one after another: windows of 3 s, a hop (0.96 s) apart, until one ends past the 9 s.
    assert 9.0 <= replayed["stream_seconds"] < 9.0 + 0.97 and replayed["decisions"] == 8
    assert replayed["real_time_factor"] > 0
    apart = speed.replay_speed(clips, "torch", tmp_path, slot_s=3.0)  # one clip a window, as the demo replays them
    # Windows of 3 s a clip each, until one ends at or after the end of both files (the video's held last frame
    # may take one more).
    assert apart["decisions"] in (len(clips), len(clips) + 1)
    assert apart["stream_seconds"] == pytest.approx(3.0 * apart["decisions"])
    assert speed.spread(list(range(10)), 4) == [0, 3, 6, 9] and speed.spread([1, 2], 5) == [1, 2]


def test_the_report_shows_each_backend_with_its_load(tmp_path):
    def row(backend, rate):
        load = {"load_before": [0.5, 0.5, 0.5], "load_after": [0.7, 0.6, 0.5]}
        return {"backend": backend, "extract": {"clips_per_s": rate, "clips_per_s_with_start_up": rate / 2, **load},
                "field": {"clips_per_s": 2 * rate, "encode_seconds": 40 / (2 * rate), "clips": 40, **load},
                "replay": {"real_time_factor": 3 * rate, **load},
                "replay_apart": {"real_time_factor": 5 * rate, **load},
                "decisions": {"p50_ms": 100 / rate, "p95_ms": 120 / rate, **load}}
    result = {"targets": speed.TARGETS, "rows": [row("torch", 3.5), row("onnxruntime", 7.5)],
              "settings": {"extract_clips": 120}}
    text = speed.describe(result)
    assert "| torch | 3.5 (1.75 with start-up) |" in text and "| onnxruntime | 7.5 (3.75 with start-up) |" in text
    assert "0.5 / 0.7" in text
    speed.plot(result, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").stat().st_size > 10_000
    json.dumps(result)  # what write_report stores
