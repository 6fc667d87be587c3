"""`torchrun -m avcil extract|train` with 2 CPU processes (gloo), started as a user starts them."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from avcil.cli import main
from avcil.data.store import open_store
from avcil.model.encoders import load_profile
from avcil.train.extract import extract
from support.media import make_video
from support.waiting import free_port, wait_until

TREE = Path(__file__).resolve().parents[1]
CLASSES = ["bell", "drum", "horn"]


def torchrun(*argv: str, cwd: Path, port: int | None = None, node: int | None = None) -> subprocess.Popen:
    """2 processes on this machine; or, with `node`, this one process of 2 "machines" meeting at `port`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TREE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    layout = (["--nproc-per-node", "2"] if node is None else
              ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1"])
    return Run(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *layout, "--master-addr", "127.0.0.1",
                                 "--master-port", str(port or free_port()), "-m", "avcil", *argv],
                                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))


class Run:
    """A torchrun launcher and its output so far (read in a thread, so the test can watch it)."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.pid, self.chunks = process, process.pid, []
        self.reader = threading.Thread(target=lambda: self.chunks.extend(iter(lambda: process.stdout.read(64), "")))
        self.reader.start()

    def output(self) -> str:
        return "".join(self.chunks)

    def poll(self):
        return self.process.poll()


def finish(run: Run, timeout: float = 120) -> tuple[int, str]:
    run.process.wait(timeout=timeout)
    run.reader.join(timeout=10)
    return run.process.returncode, run.output()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three classes of four distinct clips each, and a truncated one."""
    root = tmp_path_factory.mktemp("videos")
    for label, tone in zip(CLASSES, (440.0, 220.0, 880.0)):
        (root / label).mkdir()
        for i in range(4):
            make_video(root / label / f"clip{i}.mp4", frames=10 + 3 * i, tone_hz=tone, seed=i)
    data = make_video(root / "whole.mp4", frames=40).read_bytes()
    (root / "whole.mp4").unlink()
    (root / "horn" / "broken.mp4").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def one_process_store(videos, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("one") / "store"
    extract(videos, store, profile=load_profile("tiny"), threads=1, progress=False)
    return store


def features_by_id(store: Path) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    clips = open_store(store).clip_set("train", CLASSES)
    audio, visual = clips.load(range(len(clips.ids)))
    return {clip_id: (int(label), a, v) for clip_id, label, a, v in zip(clips.ids, clips.labels, audio, visual)}


def test_a_store_extracted_by_two_processes_equals_the_one_process_store_clip_by_clip(videos, one_process_store,
                                                                                       tmp_path):
    status, output = finish(torchrun("extract", "--profile", "tiny", "--videos", str(videos), "--out", "store",
                                     "--threads", "1", "--json", "summary.json", cwd=tmp_path))
    assert status != 0 and "12 clips extracted" in output, output  # exit 1: one clip failed
    assert output.count("clips extracted") == 1  # the summary comes from rank 0 alone
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["extracted"], summary["failed"], summary["processes"]) == (12, 1, 2)
    assert "TruncatedVideo" in json.loads((tmp_path / "store" / "failures.json").read_text())["failures"][
        "horn/broken.mp4"]
    # Both ranks wrote a shard; the store's own index links their chunks and holds no array of its own.
    assert sorted(p.name for p in (tmp_path / "store" / "shards").iterdir()) == ["rank-000-of-002", "rank-001-of-002"]
    assert not list((tmp_path / "store" / "chunks").glob("*.npy"))
    merged, alone = features_by_id(tmp_path / "store"), features_by_id(one_process_store)
    assert sorted(merged) == sorted(alone) and len(merged) == 12
    for clip_id, (label, audio, visual) in alone.items():
        assert merged[clip_id][0] == label
        np.testing.assert_array_equal(merged[clip_id][1], audio)
        np.testing.assert_array_equal(merged[clip_id][2], visual)


def _worker_of_rank(launcher: int, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def _processed(store: Path, rank: int) -> int:
    try:
        return json.loads((store / "shards" / f"rank-{rank:03d}-of-002" / "progress.json").read_text())["processed"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_rank_stops_the_other_with_a_clear_error_and_a_rerun_resumes(videos, one_process_store, tmp_path):
    # 300 clips: copies of the 12 good ones, so that the kill lands mid-run (a rank extracts about 25 tiny clips a
    # second, and reports its progress once a second).
    many, copies = tmp_path / "many", 25
    for label in CLASSES:
        (many / label).mkdir(parents=True)
        for i in range(4):
            for copy in range(copies):
                os.link(videos / label / f"clip{i}.mp4", many / label / f"clip{i}-{copy}.mp4")
    command = ("extract", "--profile", "tiny", "--videos", str(many), "--out", "store", "--threads", "1",
               "--batch-size", "1", "--json", "summary.json")
    run = torchrun(*command, cwd=tmp_path)
    wait_until(lambda: min(_processed(tmp_path / "store", 0), _processed(tmp_path / "store", 1)) >= 2
               or run.poll() is not None, 90, "2 clips done by each rank")
    assert run.poll() is None, finish(run)[1]
    os.kill(_worker_of_rank(run.pid, 1), signal.SIGKILL)
    status, output = finish(run)
    assert status != 0
    assert "avcil extract: error: rank 0 of 2: stopped by torchrun because another rank failed" in output, output
    assert "rerun the same command to resume" in output
    assert "rank      : 1" in output and "SIGKILL" in output  # torchrun's report names the rank that died

    status, output = finish(torchrun(*command, cwd=tmp_path))
    assert status == 0, output
    summary = json.loads((tmp_path / "summary.json").read_text())
    total = len(CLASSES) * 4 * copies
    assert summary["already_done"] > 0 and summary["already_done"] + summary["extracted"] == total  # resumed
    merged, alone = features_by_id(tmp_path / "store"), features_by_id(one_process_store)
    assert len(merged) == total
    for clip_id, (label, audio, visual) in merged.items():
        source = clip_id.rsplit("-", 1)[0] + ".mp4"
        assert label == alone[source][0]
        np.testing.assert_array_equal(audio, alone[source][1])
        np.testing.assert_array_equal(visual, alone[source][2])


def test_two_processes_train_one_model_dir_with_the_accuracy_of_one(tmp_path):
    """The analytic default: its readout sums over the ranks. (The gradient path, DDP with iCaRL, is compared with
    one process in the test below, step by step.)"""
    flags = ("--data", "synthetic", "--method", "analytic", "--steps", "5")
    status, output = finish(torchrun("train", *flags, "--out", "two", cwd=tmp_path))
    assert status == 0, output
    assert output.count("wrote ") == 1  # rank 0 alone writes
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["accuracy.png", "model", "results.json"]
    assert main(["train", *flags, "--out", str(tmp_path / "one")]) == 0
    two, one = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("two", "one"))
    assert abs(two["mean_accuracy"] - one["mean_accuracy"]) <= 0.01
    assert len(two["step_accuracy"]) == len(one["step_accuracy"]) == 5


def test_a_machine_whose_process_dies_mid_training_makes_the_other_stop_with_a_clear_error_and_a_rerun_goes_on(
        tmp_path):
    """Two torchrun launchers, as on two machines: the survivor's launcher is not told, its DDP all-reduce fails.
    The rerun (here on one machine with 2 processes) goes on after the last finished step."""
    port = free_port()
    flags = ("train", "--data", "synthetic", "--method", "icarl", "--epochs", "40", "--steps", "2", "--out", "run")
    first, second = (torchrun(*flags, cwd=tmp_path, port=port, node=node) for node in (0, 1))
    wait_until(lambda: "step 1:" in first.output() or first.poll() is not None or second.poll() is not None, 120,
               lambda: f"rank 0's bar of the second step's epochs: {first.output()}", interval=0.2)
    assert first.poll() is None and second.poll() is None, first.output()
    time.sleep(1)  # into the step's epochs, so that the kill lands mid-training
    os.kill(_worker_of_rank(second.pid, 1), signal.SIGKILL)
    status, output = finish(first)
    finish(second)
    assert status != 0
    assert "avcil train: error: rank 0 of 2: lost another rank during training step 1" in output, output
    assert "rerun the same command to go on after the last finished step" in output
    assert not (tmp_path / "run" / "model").exists() and (tmp_path / "run" / "checkpoint.pt").is_file()

    status, output = finish(torchrun(*flags, cwd=tmp_path))
    assert status == 0 and "run: going on after step 0 of 2" in output, output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert main([*flags[:-1], str(tmp_path / "one")]) == 0
    resumed, one = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("run", "one"))
    assert resumed["accuracy_matrix"] == one["accuracy_matrix"]  # as if nothing had stopped it


def test_a_checkpoint_of_other_settings_is_refused_in_one_line(tmp_path, capsys):
    from avcil.data.synthetic import SyntheticSpec, synthetic_benchmark
    from avcil.train.learner import TrainConfig
    from avcil.train.methods import build_method
    from avcil.train.protocol import run_protocol
    from avcil.train.run import save_checkpoint

    bench = synthetic_benchmark(SyntheticSpec(steps=5))
    run_protocol(bench, build_method("analytic"), TrainConfig(epochs=1), 340, progress=False,
                 on_step=lambda state: save_checkpoint(tmp_path / "run", state))
    assert main(["train", "--data", "synthetic", "--method", "icarl", "--epochs", "1", "--out",
                 str(tmp_path / "run")]) == 2
    assert "checkpoint was made with other settings" in capsys.readouterr().err


def test_a_lost_peer_is_named_with_everything_the_rank_was_doing():
    """Whichever collective of a step notices (the gradients' all-reduce or the epoch's validation sum), the error
    names the step; and a guard's label is gone once it is left."""
    from avcil.errors import StageFailed
    from avcil.train.distributed import Group

    group = Group(rank=0, world=2)
    with pytest.raises(StageFailed, match=r"^rank 0 of 2: lost another rank during training step 1, validation "
                                          r"\(Connection closed by peer\); rerun"):
        with group.guard("training step 1"), group.guard("validation"):
            raise RuntimeError("[pair.cc:553] Connection closed by peer. More text")
    assert group.doing == []
    with pytest.raises(ValueError):  # not a peer's failure: passed on as it is
        with group.guard("training step 2"):
            raise ValueError("a bug")
    assert group.doing == []
