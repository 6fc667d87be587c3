import threading

import numpy as np
import pytest

from avcil.runtime.field import FieldSettings, learn_class
from avcil.runtime.recognizer import UNKNOWN, Recognizer, run_live
from avcil.runtime.windows import Window
from support.waiting import wait_until

STAGES = {"audio_preprocess", "frame_preprocess", "audio_encoder", "visual_encoder", "head", "total"}


def decide_files(recognizer, files, hop=0.5, slot_s=2.5) -> list[dict]:
    decisions = []
    paths = ",".join(str(p) for p in files)
    run_live(recognizer, paths, paths, lambda d, w: decisions.append(d), hop=hop, slot_s=slot_s)
    return decisions


def inside(decisions, first_start, slot_s, index) -> list[str]:
    """Labels of the windows that lie wholly inside file `index` of a playlist that began at `first_start`."""
    lo, hi = first_start + index * slot_s, first_start + (index + 1) * slot_s
    return [d["label"] for d in decisions if d["window"][0] >= lo - 0.01 and d["window"][1] <= hi + 0.01]


def test_paced_files_are_recognised_window_by_window(toy_model, tiny_profile, toy_clips):
    recognizer = Recognizer(toy_model, profile=tiny_profile, smoothing=1, score="softmax", threshold=0.0)
    try:
        decisions = decide_files(recognizer, [toy_clips["red"][4], toy_clips["blue"][4]], hop=0.25)
    finally:
        recognizer.close()
    assert {"time", "window", "label", "score", "top_k", "latency_ms", "dropped_windows", "model_version"} <= set(
        decisions[0])
    assert STAGES <= set(decisions[0]["latency_ms"])
    start = decisions[0]["window"][1] - 1.28  # the first window starts with the first file
    red, blue = inside(decisions, start, 2.5, 0), inside(decisions, start, 2.5, 1)
    assert red and blue and set(red) == {"red"} and set(blue) == {"blue"}
    ends = [d["window"][1] for d in decisions]
    assert np.allclose(np.diff(ends), 0.25 * (1 + np.diff([d["dropped_windows"] for d in decisions])), atol=1e-3)
    assert all(d["latency_ms"]["total"] >= d["latency_ms"]["head"] > 0 for d in decisions)


def test_below_the_threshold_the_label_is_unknown(toy_model, tiny_profile):
    recognizer = Recognizer(toy_model, profile=tiny_profile, score="softmax", threshold=1.0, watch=False)
    window = Window(0.0, 1.28, np.zeros(20480, np.float32), 16000, None)  # silence, no camera yet
    decision = recognizer.decide(window)
    assert decision["label"] == UNKNOWN and decision["top_k"][0]["label"] in ("red", "blue")
    assert [t["score"] for t in decision["top_k"]] == sorted((t["score"] for t in decision["top_k"]), reverse=True)


def test_a_new_version_is_picked_up_while_recognising(toy_model, tiny_profile, toy_clips):
    recognizer = Recognizer(toy_model, profile=tiny_profile, smoothing=1, score="softmax", threshold=0.0)
    decisions: list[dict] = []
    stop = threading.Event()
    green = ",".join(str(p) for p in toy_clips["green"][4:])
    worker = threading.Thread(target=run_live, args=(recognizer, green, green, lambda d, w: decisions.append(d)),
                              kwargs={"hop": 0.25, "loop": True, "stop": stop})
    worker.start()
    try:
        wait_until(lambda: len(decisions) >= 3, 30, "some decisions by the first version", interval=0.1)
        features = tiny_profile.encode_files(toy_clips["green"][:4], progress=False)
        learn_class(toy_model, "green", *features, FieldSettings(epochs=40, batch_size=16, exemplar_batch_size=16),
                    progress=False)
        wait_until(lambda: sum(d["model_version"] == "v0002" for d in decisions) >= 6, 10, "6 decisions by v0002",
                   interval=0.1)
    finally:
        stop.set()
        worker.join()
        recognizer.close()
    before = [d for d in decisions if d["model_version"] == "v0001"]
    after = [d for d in decisions if d["model_version"] == "v0002"]
    assert before and after and recognizer.reloads[0]["to"] == "v0002"
    assert "green" not in {d["label"] for d in before}
    assert [d["label"] for d in after[2:]] == ["green"] * len(after[2:])  # once the 1.28 s window is all green
    gaps = np.diff([d["window"][1] for d in decisions])
    assert gaps.max() <= 2 * 0.25 + 1e-3, "recognition paused for the update"


def test_torch_and_onnxruntime_encoders_decide_alike(toy_model, tiny_profile, toy_clips):
    pytest.importorskip("onnxruntime")
    from avcil.export.onnx import export_onnx

    export_onnx(toy_model, tiny_profile, progress=False)
    files = [toy_clips["red"][5], toy_clips["blue"][5]]
    outcomes = {}
    for backend in ("torch", "onnxruntime"):
        recognizer = Recognizer(toy_model, backend, profile=tiny_profile, smoothing=1, score="softmax", threshold=0.0,
                                watch=False)
        try:
            decisions = decide_files(recognizer, files, hop=0.5)
        finally:
            recognizer.close()
        start = decisions[0]["window"][1] - 1.28
        outcomes[backend] = [inside(decisions, start, 2.5, i) for i in range(2)]
    assert outcomes["torch"] == outcomes["onnxruntime"] and outcomes["torch"][0][0] == "red"


def test_lite_recognizer_on_onnxruntime_embeds_speech_windows_as_the_audio_arrives(tmp_path, toy_clips):
    """The lite profile's live audio path: its exported stream parts run in ONNX Runtime, the speech windows of
    each window are embedded while it runs, and after its end only the newest ones are left."""
    pytest.importorskip("onnxruntime")
    import torch

    from avcil.export.onnx import export_onnx
    from avcil.model.encoders import load_profile
    from avcil.model.head import FusionHead, HeadConfig
    from avcil.modeldir import ModelDir

    lite = load_profile("lite")
    torch.manual_seed(0)
    head = FusionHead(HeadConfig.for_shape(lite.shape), num_classes=2)
    ModelDir(tmp_path / "lite").commit(head, None, [{"name": "red", "step": 0}, {"name": "blue", "step": 0}],
                                       {"shape": lite.shape.to_dict(), "profile": lite.describe()})
    export_onnx(tmp_path / "lite", lite, progress=False)
    recognizer = Recognizer(tmp_path / "lite", "onnxruntime", smoothing=1, score="softmax", threshold=0.0, watch=False)
    assert recognizer.speech is not None
    try:
        files = [toy_clips["red"][0], toy_clips["blue"][0], toy_clips["red"][1]]
        decisions = decide_files(recognizer, files, hop=0.96, slot_s=2.0)  # 12 speech hops: windows repeat
    finally:
        recognizer.close()
    assert decisions and STAGES <= set(decisions[0]["latency_ms"])
    after_end = [d["speech_windows_after_end"] for d in decisions]
    # Of a window's 28 speech windows, the newest one or two wait for its end (a busy machine may leave more).
    assert np.median(after_end) <= 2, [(n, d["latency_ms"]["total"]) for n, d in zip(after_end, decisions)]
    # aiSFX ran its head before the end: its tail is left (75 of 131 frames), as for every window after the first.
    sfx_frames = [d["sfx_frames_after_end"] for d in decisions]
    assert np.median(sfx_frames) == 75, sfx_frames
    # The newest frame too was final, and encoded, before the end (WindowAssembler.settled_times), in most windows.
    frames = [d["frames_encoded_after_end"] for d in decisions]
    assert np.median(frames) == 0, frames


def test_each_version_decides_with_the_default_score_it_can_give(toy_model, tiny_profile, toy_clips):
    from avcil.modeldir import ModelDirError
    from avcil.runtime.decision import DEFAULT_SCORE, DEFAULT_THRESHOLDS, FALLBACK_SCORE

    with pytest.raises(ModelDirError, match="mahalanobis score needs the analytic readout"):
        Recognizer(toy_model, profile=tiny_profile, score="mahalanobis", watch=False)
    recognizer = Recognizer(toy_model, profile=tiny_profile, threshold=0.25, watch=False)  # a gradient-trained head
    window = Window(0.0, 1.28, np.zeros(20480, np.float32), 16000, None)
    try:
        assert (recognizer.rule.score, recognizer.rule.threshold) == (FALLBACK_SCORE, 0.25)
        assert 0.0 <= recognizer.decide(window)["score"] <= 1.0  # a softmax probability
        features = tiny_profile.encode_files(toy_clips["green"][:4], progress=False)
        learn_class(toy_model, "green", *features, progress=False)  # builds the analytic readout
        assert recognizer.reload()
        # The threshold given was on the softmax's scale: the new score decides with its own default.
        assert (recognizer.rule.score, recognizer.rule.threshold) == (DEFAULT_SCORE, DEFAULT_THRESHOLDS[DEFAULT_SCORE])
        decision = recognizer.decide(window)
        assert decision["model_version"] == "v0002" and len(decision["top_k"]) == 3
    finally:
        recognizer.close()
