import subprocess
from pathlib import Path

import numpy as np
import pytest

from avcil.data.decode import (DecodeError, EmptyClip, NoAudioTrack, TruncatedVideo, decode_clip, read_audio,
                               read_frames)
from avcil.data.preprocess import sample_frame_indices
from support.media import frame_level, make_video

@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_video(folder / "ok.mp4")
    make_video(folder / "silent.mp4", tone_hz=None)
    data = make_video(folder / "whole.mp4", frames=40).read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "0",
                    "-c:v", "libx264", str(folder / "zero.mp4")], check=True)
    return folder


def test_frames_are_sampled_uniformly_in_rgb_with_first_and_last(videos):
    frames, duration = read_frames(videos / "ok.mp4", 8)
    assert duration == pytest.approx(2.0)
    assert len(frames) == 8 and all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    red = [float(f[..., 0].mean()) for f in frames]
    expected = [frame_level(i) for i in sample_frame_indices(20, 8)]
    np.testing.assert_allclose(red, expected, atol=2)  # neighbours differ by 6
    assert expected[0] == frame_level(0) and expected[-1] == frame_level(19)
    assert all(abs(f[..., 2].mean() - 200) < 3 and f[..., 1].mean() < 3 for f in frames)  # RGB, not BGR


def test_audio_is_mono_float_at_the_requested_rate(videos):
    waveform = read_audio(videos / "ok.mp4", 16000)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert len(waveform) == pytest.approx(2.0 * 16000, rel=0.05)
    spectrum = np.abs(np.fft.rfft(waveform))
    assert np.fft.rfftfreq(len(waveform), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)


@pytest.mark.parametrize("rate", [44100, 16000])
def test_audio_decodes_as_the_ffmpeg_command_does(tmp_path, rate):
    # Stereo at 48 kHz, the channels unlike: the downmix and the resampler are FFmpeg's own, as the ffmpeg command
    # (which decoding used before) gives them, so features extracted before and after agree.
    path = tmp_path / "stereo.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=2",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2", "-f", "lavfi", "-i",
                    "anoisesrc=color=pink:sample_rate=48000:duration=2:seed=3", "-filter_complex",
                    "[1:a][2:a]join=inputs=2:channel_layout=stereo[a]", "-map", "0:v", "-map", "[a]", "-c:v",
                    "libx264", "-c:a", "aac", str(path)], check=True)
    command = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn", "-ac",
                              "1", "-ar", str(rate), "-f", "f32le", "pipe:1"], check=True, capture_output=True)
    expected = np.frombuffer(command.stdout, dtype="<f4")
    waveform = read_audio(path, rate)
    assert waveform.shape == expected.shape
    np.testing.assert_allclose(waveform, expected, atol=1e-5)


def test_a_video_without_audio_is_an_error_or_silence_when_asked(videos):
    with pytest.raises(NoAudioTrack, match="silent.mp4"):
        decode_clip(videos / "silent.mp4", 4, 16000)
    clip = decode_clip(videos / "silent.mp4", 4, 16000, missing_audio="silence")
    assert clip.silent_fallback and len(clip.frames) == 4
    assert len(clip.waveform) == 2 * 16000 and not clip.waveform.any()


def test_a_truncated_file_is_a_truncation_error_naming_it(videos):
    with pytest.raises(TruncatedVideo, match="truncated.mp4.*states 40 frames"):
        decode_clip(videos / "truncated.mp4", 8, 16000)


@pytest.mark.parametrize("name", ["empty.mp4", "zero.mp4"])
def test_a_zero_length_clip_is_an_empty_clip_error(videos, name):
    with pytest.raises(EmptyClip, match=name):
        decode_clip(videos / name, 8, 16000)


def test_a_missing_or_non_video_file_is_a_decode_error(videos, tmp_path):
    with pytest.raises(DecodeError, match="no such file"):
        decode_clip(tmp_path / "nope.mp4", 8, 16000)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(DecodeError, match="junk.mp4"):
        decode_clip(junk, 8, 16000)
    with pytest.raises(ValueError, match="missing_audio"):
        decode_clip(videos / "ok.mp4", 8, 16000, missing_audio="ignore")
