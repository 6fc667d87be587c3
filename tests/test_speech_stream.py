"""The live path of the lite audio encoder: speech windows embedded from a microphone ring as the audio arrives
give the audio vector that the whole-window encoder gives, and after the window's end little is left to embed."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from avcil.data.preprocess import resample
from avcil.model.encoders.lite import load_lite_audio
from avcil.backends import load_backend
from avcil.runtime.sources import AudioRing
from avcil.runtime.speech_stream import SpeechStream, snap_hop

RATE = 44100


@pytest.fixture(scope="module")
def lite_audio():
    encoder, prep, _ = load_lite_audio()
    parts = {name: load_backend(module, "torch", input_names=["x"], output_names=["y"], input_shapes=[shape])
             for name, (module, shape) in encoder.stream_parts().items()}
    return encoder, prep, parts


def spoken(tmp_path) -> np.ndarray:
    soundfile = pytest.importorskip("soundfile")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "seven, three, nine. one two"], check=True, capture_output=True)
    waveform, rate = soundfile.read(path, dtype="float32")
    return resample(waveform, rate, RATE)


def test_streamed_speech_windows_give_the_whole_window_audio_vector(lite_audio, tmp_path):
    encoder, prep, parts = lite_audio
    stream = SpeechStream(parts["audio_sfx"], parts["speech_window"], prep)
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), spoken(tmp_path)])
    end = len(audio) / RATE
    start = end - prep.window_seconds
    ring = AudioRing(RATE, 10.0)
    embedded_before_end = 0
    for block_end in range(1024, len(audio) + 1, 1024):  # a sound card's blocks, each stamped with its end time
        ring.append(audio[block_end - 1024:block_end], block_end / RATE)
        embedded_before_end += stream.encode_ready(ring, start)
    window = ring.window(end, prep.window_seconds)
    streamed, after_end, sfx_frames = stream.audio_features(prep.sfx_input(window, RATE)[None], window, RATE, start)
    with torch.no_grad():
        whole = encoder(torch.from_numpy(prep(window, RATE)[None])).numpy()
    assert streamed.shape == whole.shape == (1, encoder.dim)
    assert embedded_before_end + after_end == stream.count and after_end <= 2
    assert sfx_frames == prep.sfx_shape[0]  # no columns graph given: aiSFX runs whole after the end
    # Only the resampling at the windows' edges differs (the stream resamples each window with real context).
    cosine = float(streamed[0] @ whole[0] / np.linalg.norm(streamed[0]) / np.linalg.norm(whole[0]))
    assert cosine > 0.999
    np.testing.assert_allclose(streamed[0, :512], whole[0, :512], rtol=1e-4, atol=1e-4)  # aiSFX: the same input


def test_a_hop_that_is_a_whole_number_of_speech_hops_reuses_every_shared_window(lite_audio):
    _, prep, parts = lite_audio
    hop = snap_hop(1.0, prep)
    assert hop == pytest.approx(0.96)
    stream = SpeechStream(parts["audio_sfx"], parts["speech_window"], prep)
    ring = AudioRing(RATE, 10.0)
    ring.append(np.random.default_rng(0).standard_normal(6 * RATE).astype(np.float32) * 0.1, 6.0)
    assert stream.encode_ready(ring, 1.0) == stream.count
    # The next window starts one hop later: all but the windows of its last hop are already embedded.
    assert stream.encode_ready(ring, 1.0 + hop) == round(hop / stream.hop_s)


def test_a_window_apart_from_the_one_before_runs_the_whole_graph_and_an_overlapping_one_its_parts(lite_audio,
                                                                                                  tmp_path):
    encoder, prep, parts = lite_audio
    whole_graph = load_backend(encoder, "torch", input_names=["x"], output_names=["y"], input_shapes=[prep.input_shape])
    stream = SpeechStream(parts["audio_sfx"], parts["speech_window"], prep, whole_encoder=whole_graph)
    rng = np.random.default_rng(1)
    audio = np.concatenate([spoken(tmp_path), rng.standard_normal(8 * RATE).astype(np.float32) * 0.05])
    seconds = prep.window_seconds

    def decide(start: float) -> tuple[np.ndarray, int, int]:
        window = audio[int(round(start * RATE)):int(round(start * RATE)) + int(round(seconds * RATE))]
        streamed = stream.audio_features(prep.sfx_input(window, RATE)[None], window, RATE, start)
        with torch.no_grad():
            return (*streamed, encoder(torch.from_numpy(prep(window, RATE)[None])).numpy())

    # Windows one after another, as the demo replays one clip a window: each is extraction's vector, in one call.
    for start in (0.0, seconds):
        vector, embedded, sfx_frames, expected = decide(start)
        np.testing.assert_array_equal(vector, expected)
        assert (embedded, sfx_frames) == (stream.count, prep.sfx_shape[0])
    # A window that overlaps the one before runs aiSFX and the speech windows apart, keeping them for the next one;
    # its windows are cut from the window's own resampling, as extraction cuts them.
    for start in (seconds + 0.96, seconds + 2 * 0.96):
        vector, embedded, _, expected = decide(start)
        np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)
    assert embedded == round(0.96 / stream.hop_s)  # the second overlapping window reused the first's
