"""The Python API (avcil/api.py): README.md#python-api's example runs as written on the toy model, `predict` gives
what the recogniser's `decide` gives a window, and learning through it is `avcil learn`'s."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    """The Python block of README.md's "Python API" section."""
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section holds one example"
    return blocks[0]


def with_paths(code: str, **values) -> str:
    """The example with its path constants (MODEL = ..., at the start of a line) set to `values`."""
    for name, value in values.items():
        code, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
        assert count == 1, f"the example sets {name} once"
    return code


def test_the_readme_example_runs_on_the_toy_model(analytic_model, toy_clips, capsys):
    code = with_paths(readme_example(), MODEL=str(analytic_model), CLIP=str(toy_clips["red"][0]),
                      NEW_CLIPS=[str(p) for p in toy_clips["green"][:4]])
    scope: dict = {}
    exec(compile(code, "README.md#python-api", "exec"), scope)
    decision, summary, model = scope["decision"], scope["summary"], scope["model"]
    # The toy model learnt no background, so its default score (mahalanobis) calls the clip unknown; red ranks first.
    assert decision["top_k"][0]["label"] == "red" and decision["model_version"] == "v0001"
    for key in ("score", "top_k", "latency_ms", "time", "window", "dropped_windows", "audio_missing",
                "video_missing", "backend", "threads"):
        assert key in decision, key
    assert summary["version"] == "v0002" and summary["parent"] == "v0001" and summary["clips"] == 4
    assert "separation" in summary and "encode_seconds" in summary
    assert model.classes == ["red", "blue", "doorbell"] and model.version == "v0002"
    assert "v0001 ['red', 'blue']" in capsys.readouterr().out


def test_predict_is_the_recognisers_decision_of_the_same_window(analytic_model, toy_clips):
    import avcil
    from avcil.data.decode import decode_clip
    from avcil.runtime.recognizer import Recognizer
    from avcil.runtime.windows import Window

    with avcil.Model.load(analytic_model) as model:
        clip = decode_clip(toy_clips["blue"][1], model.frame_count, model.sample_rate)
        ours = model.predict(audio=clip.waveform, sample_rate=clip.sample_rate, frames=clip.frames)
        flipped = model.predict(audio=clip.waveform, sample_rate=clip.sample_rate,
                                frames=[f[..., ::-1] for f in clip.frames], channels="bgr")
        seconds = model.window_seconds
    recognizer = Recognizer(analytic_model, watch=False, smoothing=1)
    try:
        theirs = recognizer.decide(Window(0.0, seconds, clip.waveform, clip.sample_rate, clip.frames))
    finally:
        recognizer.close()
    for decision in (ours, flipped):
        assert decision["label"] == theirs["label"] and decision["top_k"][0]["label"] == "blue"
        assert decision["score"] == pytest.approx(theirs["score"], abs=1e-5)
        assert [k["label"] for k in decision["top_k"]] == [k["label"] for k in theirs["top_k"]]


def test_audio_alone_more_frames_than_the_encoders_take_and_bad_input(analytic_model, toy_clips):
    import avcil
    from avcil.data.decode import decode_clip
    from avcil.errors import InvalidInput
    from avcil.modeldir import ModelDirError

    model = avcil.Model.load(analytic_model)
    try:
        clip = decode_clip(toy_clips["red"][2], 20, model.sample_rate)
        both = model.predict(clip.waveform, clip.sample_rate, clip.frames)  # 20 frames, sampled
        assert both["top_k"][0]["label"] == "red" and both["decided_on"] == "audio-visual"
        alone = model.predict(clip.waveform, clip.sample_rate)
        assert alone["video_missing"] and not alone["audio_missing"]
        assert alone["decided_on"] == "audio"  # by the readout of the audio alone, not with black frames
        with pytest.raises(InvalidInput, match="sample_rate"):
            model.predict(clip.waveform, 0, clip.frames)
        with pytest.raises(InvalidInput, match="channels"):
            model.predict(clip.waveform, clip.sample_rate, clip.frames, channels="yuv")
        with pytest.raises(InvalidInput, match="RGB uint8"):
            model.predict(clip.waveform, clip.sample_rate, [f.astype(np.float32) for f in clip.frames])
        with pytest.raises(ModelDirError, match="already in the model"):
            model.learn("red", files=toy_clips["red"][:2])
    finally:
        model.close()


def test_correct_and_background_commit_versions_the_model_then_uses(analytic_model, toy_clips):
    import avcil

    with avcil.Model.load(analytic_model) as model:
        corrected = model.correct("red", files=toy_clips["green"][:1])
        assert corrected["version"] == model.version == "v0002" and corrected["not"] == "red"
        background = model.learn_background(files=toy_clips["green"][1:2], force=True)
        assert background["version"] == model.version == "v0003" and background["background_windows"] > 0


def test_import_avcil_loads_neither_torch_nor_the_api():
    code = "import sys, avcil; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('avcil.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        import avcil
        avcil.Nothing
