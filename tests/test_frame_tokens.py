"""Frame-by-frame visual encoding for live windows: the lite CNN encodes each frame on its own (in torch and in its
ONNX export), a live window's tokens built frame by frame equal the window encoded whole, and the recognizer leaves
only the newest frame or two to encode after a window ends."""

import numpy as np
import pytest
import torch

from avcil.export.onnx import export_graph
from avcil.model.graphs import VISUAL_GRAPH, dynamic_axes
from avcil.model.encoders import load_profile
from avcil.model.head import FusionHead, HeadConfig
from avcil.backends import OnnxRuntimeBackend, load_backend
from avcil.runtime.frame_tokens import FrameTokens
from avcil.modeldir import ModelDir
from avcil.runtime.recognizer import Recognizer, run_live

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def lite():
    return load_profile("lite")


def random_frames(count: int) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(count)]


def torch_frame_backend(profile):
    return load_backend(profile.visual, "torch", input_names=list(VISUAL_GRAPH.inputs),
                        output_names=list(VISUAL_GRAPH.outputs), input_shapes=[(None, *profile.visual_input_shape[1:])])


def test_only_the_lite_profile_encodes_frames_independently(lite):
    assert lite.frames_independent
    assert not load_profile("tiny").frames_independent  # VideoMAE mixes frames: whole windows only


def test_lite_frames_encoded_one_by_one_equal_the_window_encoded_whole(lite):
    frames = random_frames(lite.frame_prep.count)
    with torch.inference_mode():
        whole = lite.visual(torch.from_numpy(lite.preprocess_frames(frames)[None])).numpy()
    tokens = FrameTokens(torch_frame_backend(lite), lite.frame_prep)
    stamps = [10.0 + 0.4 * i for i in range(len(frames))]
    for stamp, frame in zip(stamps, frames):
        assert tokens.encode(tokens.prepare([(stamp, frame)])) == 1
    assert tokens.encode(tokens.prepare(list(zip(stamps, frames)))) == 0  # all cached: nothing encoded again
    np.testing.assert_allclose(tokens.window(stamps), whole, atol=1e-4, rtol=1e-4)


def test_lite_visual_onnx_graph_takes_any_number_of_frames(lite, tmp_path):
    path = tmp_path / "visual.onnx"
    example = torch.from_numpy(RNG.standard_normal((2, *lite.visual_input_shape)).astype(np.float32))
    export_graph(lite.visual, [example], path, VISUAL_GRAPH, dynamic=dynamic_axes(VISUAL_GRAPH, True))
    backend = OnnxRuntimeBackend(path)
    assert FrameTokens.supports(backend)
    for count in (1, lite.frame_prep.count):
        pixels = lite.preprocess_frames(random_frames(lite.frame_prep.count))[None, :count]
        with torch.inference_mode():
            expected = lite.visual(torch.from_numpy(pixels)).numpy()
        got, = backend(pixels)
        assert got.shape == (1, count, lite.shape.positions, lite.shape.visual_dim)
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-3)


def test_a_whole_window_graph_is_refused_and_old_frames_are_forgotten(lite):
    fixed = load_backend(lite.visual, "torch", input_names=["frames"], output_names=["visual_tokens"],
                         input_shapes=[lite.visual_input_shape])
    assert not FrameTokens.supports(fixed)
    with pytest.raises(ValueError, match="fixed number of frames"):
        FrameTokens(fixed, lite.frame_prep)
    tokens = FrameTokens(torch_frame_backend(lite), lite.frame_prep, keep=3)
    frames = random_frames(5)
    tokens.encode(tokens.prepare([(float(i), f) for i, f in enumerate(frames)]))
    tokens.window([3.0, 4.0])
    assert list(tokens.tokens) == [2.0, 3.0, 4.0]  # the two oldest dropped once a window was read
    with pytest.raises(KeyError, match="not encoded"):
        tokens.window([0.0, 4.0])


def test_live_windows_decide_as_if_encoded_whole_with_one_frame_left_after_the_end(lite, tmp_path, toy_clips):
    model_dir = tmp_path / "lite-model"
    torch.manual_seed(0)
    head = FusionHead(HeadConfig.for_shape(lite.shape, 64), num_classes=3)
    ModelDir(model_dir).commit(head, None, [{"name": n, "step": 0} for n in ("a", "b", "c")],
                               {"shape": lite.shape.to_dict(), "profile": lite.describe()})
    recognizer = Recognizer(model_dir, "torch", profile=lite, score="softmax", threshold=0.0, smoothing=1, watch=False)
    assert recognizer.frame_tokens is not None
    seen = []

    try:
        # Windows are checked after the run, so that the checks (whole windows encoded in torch) do not slow the
        # loop down; a hop of 1.5 s leaves time for the next window's frames on two busy cores.
        paths = ",".join(str(p) for p in toy_clips["red"][:5])
        run_live(recognizer, paths, paths, lambda decision, window: seen.append((decision, window)), hop=1.5,
                 slot_s=2.0)
    finally:
        recognizer.close()
    checked = []
    for decision, window in seen:
        # The same window encoded whole, as `avcil extract` encodes a clip.
        audio, visual = lite.encode_batch(lite.preprocess_audio(window.waveform, window.rate)[None],
                                          lite.preprocess_frames(window.frames)[None])
        with torch.inference_mode():
            probabilities = torch.softmax(head(torch.from_numpy(audio), torch.from_numpy(visual)).logits, 1)[0]
        decided = {t["label"]: t["score"] for t in decision["top_k"]}
        whole = dict(zip(("a", "b", "c"), probabilities.tolist()))
        # Frames are the same; the speech windows are resampled from the stream with real audio around them,
        # where the whole window has silence beyond its edges (speech_stream: cosine > 0.999 of the audio vector).
        assert decided == pytest.approx(whole, abs=5e-3)
        checked.append(decision["frames_encoded_after_end"])
    assert len(checked) >= 3
    # The window's last frame is taken at its end; the others were encoded while it was being recorded.
    assert sorted(checked)[len(checked) // 2] <= 2, checked
