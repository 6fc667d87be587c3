from fractions import Fraction

import numpy as np
import pytest

from avcil.data.preprocess import (AUDIOMAE_NORM_MEAN, AUDIOMAE_NORM_STD, FramePreprocess, KaldiFbank, SfxMel,
                                   SfxSpeech, audio_preprocess_from_settings, essentia_mel_filterbank,
                                   frame_preprocess_from_settings, resample, sample_frame_indices)

RNG = np.random.default_rng(0)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def dominant_frequency(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return np.fft.rfftfreq(len(waveform), 1 / rate)[np.argmax(spectrum)]


@pytest.mark.parametrize("frames,count", [(300, 16), (100, 8), (16, 16), (5, 8), (2, 2)])
def test_frame_indices_are_uniform_and_include_both_ends(frames, count):
    indices = sample_frame_indices(frames, count)
    assert len(indices) == count
    assert indices[0] == 0 and indices[-1] == frames - 1
    assert indices == sorted(indices)
    steps = np.diff(indices)
    assert steps.max() - steps.min() <= 1  # evenly spread, up to rounding


def test_frame_indices_reject_an_empty_clip():
    with pytest.raises(ValueError, match="0 frames"):
        sample_frame_indices(0, 8)
    assert sample_frame_indices(9, 1) == [4]


@pytest.mark.parametrize("from_rate,to_rate", [(44100, 11430), (48000, 16000), (8000, 44100), (22050, 22050)])
def test_resample_keeps_pitch_and_duration(from_rate, to_rate):
    out = resample(tone(440.0, 2.0, from_rate), from_rate, to_rate)
    assert abs(len(out) - 2.0 * to_rate) <= 1
    assert dominant_frequency(out, to_rate) == pytest.approx(440.0, abs=1.0)
    assert np.abs(out[to_rate // 4:-to_rate // 4]).max() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("from_rate,to_rate", [(44100, 16000), (44100, 11430), (48000, 16000), (8000, 44100)])
def test_resample_with_its_filter_designed_once_gives_scipys_samples_bit_for_bit(from_rate, to_rate):
    from scipy.signal import resample_poly

    ratio = Fraction(to_rate, from_rate).limit_denominator(4096)
    noise = np.random.default_rng(0).standard_normal(from_rate // 3).astype(np.float32)
    designed_each_call = resample_poly(noise, ratio.numerator, ratio.denominator)
    assert np.array_equal(resample(noise, from_rate, to_rate), designed_each_call)
    assert np.array_equal(resample(noise[::-1], from_rate, to_rate),  # a second call, with the cached filter
                          resample_poly(noise[::-1], ratio.numerator, ratio.denominator))


def test_resample_removes_what_the_new_rate_cannot_hold():
    # 7 kHz cannot exist at 11,430 Hz (Nyquist 5,715 Hz): a proper low-pass removes it instead of aliasing it.
    out = resample(tone(7000.0, 1.0, 44100), 44100, 11430)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 0.01


def kaldi_native_fbank(waveform: np.ndarray, rate: int, bins: int) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = rate
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.mel_opts.num_bins = bins
    opts.htk_compat = True
    opts.use_energy = False
    computer = knf.OnlineFbank(opts)
    computer.accept_waveform(float(rate), waveform - waveform.mean())
    computer.input_finished()
    return np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)])


@pytest.mark.parametrize("rate,bins", [(11430, 128), (16000, 64), (44100, 128)])
def test_fbank_matches_kaldi_native_fbank(rate, bins):
    waveform = (0.1 * RNG.standard_normal(3 * rate) + tone(440.0, 3.0, rate)).astype(np.float32)
    ours = KaldiFbank(sample_rate=rate, normalize=False, num_mel_bins=bins).fbank(waveform)
    reference = kaldi_native_fbank(waveform, rate, bins)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=2e-3)


def test_fbank_at_16k_keeps_audiomae_empty_bands():
    # 128 bands at 16 kHz: one low band holds no FFT bin; torchaudio (AudioMAE) leaves it at log(eps).
    fbank = KaldiFbank(sample_rate=16000, normalize=False).fbank(0.1 * RNG.standard_normal(16000))
    empty = np.flatnonzero(np.all(fbank == np.float32(np.log(np.finfo(np.float32).eps)), axis=0))
    assert 0 < len(empty) < 4
    assert fbank.shape == (98, 128)


def test_fbank_pads_short_clips_crops_long_ones_and_normalises_when_asked():
    raw = KaldiFbank(sample_rate=16000, normalize=False, target_frames=200)
    short = raw(tone(1000.0, 1.0, 16000), 16000)[0]
    assert short.shape == (200, 128)
    assert np.all(short[98:] == 0) and np.all(short[:98].max(axis=1) > 0)
    long = raw(tone(1000.0, 5.0, 16000), 16000)[0]
    np.testing.assert_allclose(long, raw.fbank(tone(1000.0, 5.0, 16000))[:200])

    normalised = KaldiFbank(sample_rate=16000, normalize=True, target_frames=200)(tone(1000.0, 1.0, 16000), 16000)
    np.testing.assert_allclose(normalised[0], (short - AUDIOMAE_NORM_MEAN) / (2 * AUDIOMAE_NORM_STD), rtol=1e-5)


def test_fbank_resamples_to_its_own_rate():
    fbank = KaldiFbank(sample_rate=11430, normalize=False, target_frames=90)
    resampled, native = fbank(tone(600.0, 1.0, 44100), 44100)[0], fbank(tone(600.0, 1.0, 11430), 11430)[0]
    loud = native > native.max() - 6  # bands within a factor e^6 of the tone; below that is numerical noise
    assert loud.any(axis=1).all()
    np.testing.assert_allclose(resampled[loud], native[loud], atol=0.05)


def test_essentia_mel_bands_are_unit_sum_triangles_in_order():
    filters = essentia_mel_filterbank(44100, 2048, 96, 0.0, 22050.0)
    assert filters.shape == (96, 1025)
    np.testing.assert_allclose(filters.sum(axis=1), 1.0, rtol=1e-6)
    peaks = filters.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 900


def test_sfx_mel_puts_a_tone_in_its_band_and_fixes_the_window():
    sfx = SfxMel(window_seconds=3.0)
    spec = sfx(tone(1000.0, 1.0, 44100), 44100)
    assert spec.shape == sfx.input_shape == (131, 96)
    band_centres = essentia_mel_filterbank(44100, 2048, 96, 0.0, 22050.0).argmax(axis=1) * 44100 / 2048
    loudest = spec.max(axis=0).argmax()
    assert abs(band_centres[loudest] - 1000.0) < 100.0
    # the 1 s tone sits in the middle of the 3 s window, silence around it
    assert spec[:30].max() == 0.0 and spec[-30:].max() == 0.0 and spec[60:70].max() > 0.3


def test_frames_are_resized_cropped_in_the_centre_and_normalised():
    prep = FramePreprocess(count=2, size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    frame = np.full((60, 120, 3), 128, dtype=np.uint8)  # wide: the crop keeps the middle half
    frame[:, :30] = 255  # left quarter white, right quarter black: both fall outside the centre crop
    frame[:, 90:] = 0
    out = prep([frame, frame])
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, (128 / 255 - 0.5) / 0.25, atol=1e-6)


def test_frames_reject_the_wrong_count_and_non_rgb_images():
    prep = FramePreprocess(count=2, size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ValueError, match="expected 2 frames"):
        prep([np.zeros((40, 40, 3), np.uint8)])
    with pytest.raises(ValueError, match="RGB uint8"):
        prep([np.zeros((40, 40), np.uint8)] * 2)


def test_settings_round_trip_rebuilds_the_same_preprocessing():
    waveform = tone(500.0, 2.0, 16000)
    for prep in (KaldiFbank(sample_rate=11430, normalize=False), SfxMel(window_seconds=2.0),
                 SfxSpeech(window_seconds=2.0)):
        again = audio_preprocess_from_settings(prep.to_dict())
        assert again == prep
        np.testing.assert_array_equal(again(waveform, 16000), prep(waveform, 16000))
    frames = FramePreprocess(count=4, size=64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert frame_preprocess_from_settings(frames.to_dict()) == frames
    with pytest.raises(ValueError, match="unknown audio preprocessing"):
        audio_preprocess_from_settings({"kind": "mfcc"})


def test_sound_and_speech_input_is_the_spectrogram_then_the_window_at_16k():
    waveform = tone(440.0, 3.0, 48000)
    prep = SfxSpeech(window_seconds=3.0)
    packed = prep(waveform, 48000)
    frames, bands = prep.sfx_shape
    np.testing.assert_array_equal(packed[:frames * bands].reshape(frames, bands),
                                  SfxMel(window_seconds=3.0)(waveform, 48000))
    np.testing.assert_allclose(packed[frames * bands:], resample(waveform, 48000, 16000), atol=1e-6)
