import time

import numpy as np

from avcil.runtime.sources import AudioRing, CameraSource, FrameHistory, PacedAudioFiles, PacedVideoFiles, clock
from avcil.runtime.windows import Schedule
from support.commands import avcil
from support.media import make_wav
from support.waiting import wait_until


def test_the_audio_ring_cuts_windows_by_clock_time():
    ring = AudioRing(rate=100, seconds=2.0)
    signal = np.arange(300, dtype=np.float32)  # 3 s at 100 Hz: the ring keeps the last 2 s
    for i in range(0, 300, 10):
        ring.append(signal[i:i + 10], end_time=1000.0 + (i + 10) / 100)
    np.testing.assert_array_equal(ring.window(1003.0, 0.5), signal[250:300])
    np.testing.assert_array_equal(ring.window(1002.0, 0.5), signal[150:200])
    late = ring.window(1003.2, 0.5)  # past the newest sample: the missing tail is silence
    np.testing.assert_array_equal(late[:30], signal[270:300])
    assert not late[30:].any()
    old = ring.window(1000.8, 0.5)  # older than the ring keeps: silence
    assert not old.any() and ring.covers(1003.0) and not ring.covers(1003.01)


def test_frame_history_samples_frames_by_time_and_keeps_a_bounded_past():
    history = FrameHistory(seconds=1.0, min_interval=0.09)
    for i in range(40):  # 40 frames at 20 fps, their first pixel holding their number
        frame = np.full((4, 4, 3), i, np.uint8)
        history.add(frame, 100.0 + i * 0.05)
    assert len(history.frames) <= 11  # thinned to 10 per second, one second kept
    picked = history.sample([101.0, 101.5, 101.95, 99.0])
    assert [int(f[0, 0, 0]) for f in picked] == [20, 30, 38, 18]


def test_a_frame_time_before_the_settled_bound_keeps_its_frame_whatever_arrives_later():
    # A camera at 25 fps with jittered stamps; the history keeps one frame per 0.1875 s (the lite window's spacing).
    rng = np.random.default_rng(0)
    stamps = np.cumsum(rng.uniform(0.03, 0.05, 200))
    history = FrameHistory(seconds=30.0, min_interval=0.1875)
    start, end = 2.0, 5.0
    times = np.linspace(start, end - 0.001, 8)
    settled_early = []
    for stamp in stamps:
        history.add(np.full((2, 2, 3), 0, np.uint8), float(stamp))
        bound = history.settled_before(start)
        early = times[(times < bound) & (times > stamp)]  # settled before their moment has come
        if len(early):
            settled_early.append((early, [t for t, _ in history.sample_stamped(early, earliest=start)]))
    assert settled_early, "no time was ever settled before its moment"
    for early, picked in settled_early:
        assert [t for t, _ in history.sample_stamped(early, earliest=start)] == picked
    assert any(times[-1] in early for early, _ in settled_early)  # the newest frame, before the window's end
    assert FrameHistory(1.0, 0.1).settled_before(0.0) == float("-inf")
    history = FrameHistory(10.0, 0.1875)
    history.add(np.zeros((2, 2, 3), np.uint8), 1.95)
    assert history.settled_before(2.0) == float("-inf")  # a frame within the window would still replace it


def test_a_late_consumer_drops_windows_and_counts_them():
    schedule = Schedule(first_end=10.0, hop=1.0)
    assert schedule.next_end(now=9.0) == 10.0
    assert schedule.next_end(now=10.2) == 11.0  # on time: the next window
    assert schedule.next_end(now=14.5) == 14.0  # fell behind: 12 and 13 dropped, 14 is the newest ended
    assert schedule.dropped == 2
    assert schedule.next_end(now=14.6) == 15.0 and schedule.dropped == 2


def test_a_wav_at_another_rate_is_resampled_to_the_ring_rate(tmp_path):
    wav = make_wav(tmp_path / "tone8k.wav", tone_hz=1000, seconds=1.0, rate=8000)
    ring = AudioRing(rate=16000, seconds=3.0)
    start = clock() + 0.05
    with PacedAudioFiles([wav], ring, start=start) as source:
        wait_until(lambda: source.finished, 30, "the WAV file to be played", interval=0.02)
    assert clock() - start >= 0.95  # played in real time, not as fast as it decodes
    audio = ring.window(start + 1.0, 1.0)
    assert abs(len(audio) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 1000) < 5  # still a 1 kHz tone at 16 kHz


def test_video_files_are_paced_in_real_time_and_hold_their_last_frame(toy_clips):
    history = FrameHistory(seconds=5.0, min_interval=0.0)
    start = clock() + 0.05
    with PacedVideoFiles([toy_clips["red"][0]], history, start=start, slot_s=2.5) as source:
        wait_until(lambda: history.received >= 8 or source.finished, 30, "8 frames",  # a loaded machine decodes late
                   interval=0.02)
        assert clock() - start >= 0.65  # 8 frames at 10 fps come no sooner than real time lets them
        wait_until(lambda: source.finished, 30, "the video file to be played")
    assert clock() - start >= 2.3  # the slot, less the last frame's period
    assert start + 2.3 < history.latest()[0] < start + 2.5


def test_the_camera_reconnects_when_the_stream_server_stops(toy_clips, mjpeg_camera):
    camera = mjpeg_camera(toy_clips["blue"][0])
    history = FrameHistory(seconds=2.0, min_interval=0.0)
    with CameraSource(camera.url, history) as source:
        source.wait_opened(timeout=15)
        camera.stop()  # the server goes away mid-run
        time.sleep(1.0)
        camera.start()  # and comes back on the same URL
        stopped_at = clock()
        wait_until(lambda: history.latest()[0] > stopped_at + 0.5, 20, "frames after the server came back")
        assert source.reconnects >= 1
        frame = history.latest()[1]
    assert frame.shape[2] == 3 and frame[..., 2].mean() > frame[..., 0].mean()  # blue survives MJPEG (RGB order)


def test_an_absent_microphone_lists_the_devices_there_are(toy_model, toy_clips, pulse_env):
    result = avcil("run", "--model", toy_model, "--camera", toy_clips["red"][0], "--mic", "no-such-microphone",
                   "--duration", "1", env=pulse_env, check=False)
    assert result.returncode == 2
    assert "microphone 'no-such-microphone': no such input device. Input devices here:" in result.stderr
    assert "pulse" in result.stderr or "default" in result.stderr  # the sound server's device is listed
