import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avcil.data.decode import decode_clip
from avcil.train.extract import FAILURES_FILE, add_parser, extract, list_clips
from avcil.data.store import open_store
from avcil.model.encoders import load_profile
from support.media import make_video


@pytest.fixture(scope="module")
def tiny():
    return load_profile("tiny")


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """Two classes of two good clips each, plus one truncated clip and a file that is not a video."""
    root = tmp_path / "videos"
    for label, tone in (("bell", 440.0), ("horn", 880.0)):
        (root / label).mkdir(parents=True)
        for i in range(2):
            make_video(root / label / f"clip{i}.mp4", frames=10 + 5 * i, tone_hz=tone, seed=i)
    data = make_video(tmp_path / "whole.mp4", frames=40).read_bytes()
    (root / "horn" / "broken.mp4").write_bytes(data[: len(data) // 2])
    (root / "horn" / "notes.txt").write_text("not a clip")
    return root


def test_folder_per_class_is_extracted_and_a_bad_file_is_reported_not_fatal(class_folders, tmp_path, tiny):
    store_dir = tmp_path / "store"
    summary = extract(class_folders, store_dir, profile=tiny, batch_size=3, progress=False)
    assert (summary["extracted"], summary["failed"], summary["clips_listed"]) == (4, 1, 5)
    assert "TruncatedVideo" in summary["failures"]["horn/broken.mp4"]
    assert json.loads((store_dir / FAILURES_FILE).read_text())["failures"] == summary["failures"]
    assert summary["clips_per_second"] > 0
    assert summary["feature_bytes_per_clip_fp16"] == 2 * (24 + 2 * 4 * 32)

    store = open_store(store_dir)
    assert store.class_names() == ["bell", "horn"]
    train = store.clip_set("train", ["bell", "horn"])
    assert sorted(train.ids) == ["bell/clip0.mp4", "bell/clip1.mp4", "horn/clip0.mp4", "horn/clip1.mp4"]
    # Batched extraction stores what encoding each clip on its own gives (up to fp16 storage).
    audio, visual = train.load(range(len(train.ids)))
    for row, clip_id in enumerate(train.ids):
        clip = decode_clip(class_folders / clip_id, tiny.frame_prep.count, tiny.audio_prep.sample_rate)
        alone = tiny.encode(clip.waveform, clip.sample_rate, clip.frames)
        np.testing.assert_allclose(audio[row], alone.audio, atol=2e-2, rtol=1e-2)
        np.testing.assert_allclose(visual[row], alone.visual, atol=2e-2, rtol=1e-2)
        assert train.labels[row] == (0 if clip_id.startswith("bell") else 1)


def test_a_rerun_resumes_skipping_what_is_done_and_retries_failures(class_folders, tmp_path, tiny):
    store_dir = tmp_path / "store"
    extract(class_folders, store_dir, profile=tiny, progress=False)
    again = extract(class_folders, store_dir, profile=tiny, progress=False)
    assert (again["already_done"], again["extracted"], again["failed"]) == (4, 0, 1)
    make_video(class_folders / "horn" / "broken.mp4", frames=12, tone_hz=880.0)  # the user repairs the file
    repaired = extract(class_folders, store_dir, profile=tiny, progress=False)
    assert (repaired["already_done"], repaired["extracted"], repaired["failed"]) == (4, 1, 0)
    assert len(open_store(store_dir).clip_set("train", ["bell", "horn"]).ids) == 5


def test_a_csv_assigns_splits_and_silence_can_stand_in_for_missing_audio(tmp_path, tiny):
    make_video(tmp_path / "a.mp4", tone_hz=440.0)
    make_video(tmp_path / "b.mp4", tone_hz=None)
    table = tmp_path / "clips.csv"
    table.write_text("path,label,split\na.mp4,bell,test\nb.mp4,horn,val\n")
    strict = extract(table, tmp_path / "strict", profile=tiny, progress=False)
    assert strict["extracted"] == 1 and "NoAudioTrack" in strict["failures"]["b.mp4"]
    lenient = extract(table, tmp_path / "lenient", profile=tiny, missing_audio="silence", progress=False)
    assert lenient["extracted"] == 2 and lenient["silent_audio"] == ["b.mp4"]
    store = open_store(tmp_path / "lenient")
    assert store.clip_set("test", ["bell", "horn"]).ids == ["a.mp4"]
    assert store.clip_set("val", ["bell", "horn"]).ids == ["b.mp4"]


def test_bad_listings_are_clear_errors(tmp_path):
    table = tmp_path / "clips.csv"
    table.write_text("path,label,split\na.mp4,bell,holdout\n")
    with pytest.raises(ValueError, match=r"clips.csv:2: split 'holdout'"):
        list_clips(table)
    table.write_text("file,label\na.mp4,bell\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['path', 'split'\]"):
        list_clips(table)
    (tmp_path / "empty" / "bell").mkdir(parents=True)
    with pytest.raises(ValueError, match="no videos found"):
        list_clips(tmp_path / "empty")


def test_command_line_exit_status_summary_and_json(class_folders, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="avcil")
    add_parser(parser.add_subparsers())
    report = tmp_path / "summary.json"
    args = parser.parse_args(["extract", "--profile", "tiny", "--videos", str(class_folders), "--out",
                              str(tmp_path / "store"), "--batch-size", "2", "--json", str(report)])
    assert args.func(args) == 1  # one clip failed
    err = capsys.readouterr().err
    assert "4 clips extracted" in err and "failed horn/broken.mp4" in err and "clip/s" in err
    assert json.loads(report.read_text())["failed"] == 1
    shutil.copy(class_folders / "horn" / "clip0.mp4", class_folders / "horn" / "broken.mp4")
    assert args.func(args) == 0
