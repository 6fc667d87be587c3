"""aiSFX on a live stream (avcil.runtime.sfx_stream): its head run before a window ends and its tail after give the
vector the whole window gives, because a column of the network sees only the frames near its own."""

import numpy as np
import pytest
import torch

from avcil.backends import load_backend
from avcil.model.encoders.lite import SfxColumns, load_lite_audio
from avcil.runtime.sfx_stream import COLUMN_FRAMES, EDGE_COLUMNS, SfxStream
from avcil.runtime.sources import AudioRing, SteadyStamps

RATE = 44100


@pytest.fixture(scope="module")
def lite():
    encoder, prep, _ = load_lite_audio()
    columns = SfxColumns(encoder.sfx.net).eval()
    backend = load_backend(columns, "torch", input_names=["x"], output_names=["y"],
                           input_shapes=[(None, prep.sfx_shape[1])])
    return encoder, prep, columns, backend


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Noise bursts in silence: columns that differ, so that a wrong column would change the max.
    audio = rng.standard_normal(int(seconds * RATE)).astype(np.float32) * 0.05
    audio *= (np.sin(np.arange(len(audio)) / RATE * 2 * np.pi * 1.3) > 0.3)
    return audio


@torch.no_grad()
def test_the_columns_max_is_the_sfx_vector(lite):
    encoder, prep, columns, _ = lite
    spectrogram = torch.from_numpy(prep.sfx_input(noise(3.0), RATE)[None])
    cols = columns(spectrogram)
    assert cols.shape == (1, prep.sfx_shape[0] // COLUMN_FRAMES, 512)
    torch.testing.assert_close(cols.amax(dim=1), encoder.sfx(spectrogram), rtol=0, atol=0)


@torch.no_grad()
def test_a_column_depends_only_on_frames_within_its_edge_columns(lite):
    _, prep, columns, _ = lite
    spectrogram = torch.from_numpy(prep.sfx_input(noise(3.0, seed=1), RATE)[None])
    whole = columns(spectrogram)[0]
    for cut in range(64, prep.sfx_shape[0] - COLUMN_FRAMES, COLUMN_FRAMES):
        head, tail = columns(spectrogram[:, :cut])[0], columns(spectrogram[:, cut:])[0]
        exact_head = cut // COLUMN_FRAMES - EDGE_COLUMNS
        torch.testing.assert_close(head[:exact_head], whole[:exact_head], rtol=1e-5, atol=1e-5)
        first = cut // COLUMN_FRAMES + EDGE_COLUMNS
        torch.testing.assert_close(tail[EDGE_COLUMNS:], whole[first:], rtol=1e-5, atol=1e-5)
        # One column nearer the cut is changed by it: EDGE_COLUMNS is no larger than it must be.
        assert not torch.allclose(head[exact_head], whole[exact_head], rtol=1e-5, atol=1e-5)


def stream_window(stream: SfxStream, prep, audio: np.ndarray, rate: int) -> tuple[np.ndarray, int, int, np.ndarray,
                                                                                 int]:
    """Feed `audio` to a ring in a sound card's blocks, running the head as it arrives; the last window's vector,
    frames run after its end, heads run, its waveform and its first sample's ring index."""
    end = len(audio) / rate
    start = end - prep.window_seconds
    ring = AudioRing(rate, 10.0)
    heads = 0
    block = rate // 43
    for block_end in range(block, len(audio) + 1, block):
        ring.append(audio[block_end - block:block_end], block_end / rate)
        heads += stream.encode_ready(ring, start)
    waveform, first = ring.cut(end, prep.window_seconds)
    vector, after_end = stream.vector(stream.spectrogram(waveform, rate, first), first)  # as the recognizer runs it
    return vector, after_end, heads, waveform, first


@torch.no_grad()
def test_a_streamed_window_runs_its_tail_only_and_gives_the_whole_windows_vector(lite):
    encoder, prep, _, backend = lite
    stream = SfxStream(backend, prep)
    audio = noise(4.0 + 1000 / RATE, seed=2)
    vector, after_end, heads, waveform, first = stream_window(stream, prep, audio, RATE)
    spectrogram = prep.sfx_input(waveform, RATE)[None]
    whole = encoder.sfx(torch.from_numpy(spectrogram)).numpy()
    assert heads == 1 and after_end == prep.sfx_shape[0] - stream.tail_start < 0.6 * prep.sfx_shape[0]
    np.testing.assert_allclose(vector, whole, rtol=1e-5, atol=1e-5)
    # After the end only the tail's spectrogram frames are computed, from the samples they span: the same numbers.
    np.testing.assert_array_equal(stream.spectrogram(waveform, RATE, first), spectrogram[:, stream.tail_start:])
    np.testing.assert_array_equal(stream.spectrogram(waveform, RATE, None), spectrogram)  # no head: every frame
    # A window that is not the one the head ran on (another first sample) is run whole.
    again, frames = stream.vector(prep.sfx_input(waveform, RATE)[None], None)
    assert frames == prep.sfx_shape[0]
    np.testing.assert_allclose(again, whole, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_microphone_at_another_rate_gives_the_vector_within_resampling_error(lite):
    encoder, prep, _, backend = lite
    stream = SfxStream(backend, prep)
    rate = 48000
    audio = np.interp(np.arange(int(4.3 * rate)) / rate, np.arange(int(4.3 * RATE)) / RATE, noise(4.3, seed=3))
    vector, after_end, heads, waveform, _ = stream_window(stream, prep, audio.astype(np.float32), rate)
    whole = encoder.sfx(torch.from_numpy(prep.sfx_input(waveform, rate)[None])).numpy()
    assert heads == 1 and after_end < prep.sfx_shape[0]
    np.testing.assert_allclose(vector, whole, rtol=1e-4, atol=1e-4)


def test_a_sound_cards_late_callbacks_still_give_the_head_its_window():
    # Callbacks that run 0-8 ms late, each by another amount: stamped by their clock, a moment's sample index moves
    # with every block, so a window would never be the one its head ran on; stamped by the sample count, it stays.
    rng = np.random.default_rng(4)
    rate, block = 48000, 960
    stamps = SteadyStamps(rate)
    by_count, by_clock = AudioRing(rate, 10.0), AudioRing(rate, 10.0)
    firsts: dict[str, set] = {"count": set(), "clock": set()}
    for k in range(1, 300):
        now = 1.0 + k * block / rate + rng.uniform(0, 0.008)
        samples = np.zeros(block, np.float32)
        by_count.append(samples, stamps(block, now))
        by_clock.append(samples, now)
        if 2.0 + 3.1 <= 1.0 + k * block / rate <= 2.0 + 5.5:  # the window [2, 5] cut at any moment after its end
            firsts["count"].add(by_count.cut(5.0, 3.0)[1])
            firsts["clock"].add(by_clock.cut(5.0, 3.0)[1])
    assert len(firsts["count"]) == 1 and len(firsts["clock"]) > 10


def test_steady_stamps_follow_the_clock_when_the_card_drifts():
    stamps = SteadyStamps(1000, max_drift_s=0.05)
    assert stamps(10, 5.0) == 5.0
    assert stamps(10, 5.013) == pytest.approx(5.01)  # 3 ms late: counted
    assert stamps(10, 5.2) == 5.2  # samples lost (an overflow): the count starts again from the clock
    assert stamps(10, 5.21) == pytest.approx(5.21)
