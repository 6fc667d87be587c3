"""The load and soak benchmarks' own logic, and the thread settings recorded in each decision: the numbers the
reports show come out of these, so they are checked on runs whose answers are known."""

import json
import os
from pathlib import Path

import numpy as np

from avcil.bench.load import start_competitors, stop_competitors
from avcil.bench.soak import analyse, field_plan, process_resources, rss_growth, truth_of
from support.commands import avcil
from support.waiting import wait_until

HOP = 1.0
PLAYLIST = [str(d) for d in range(10)]


def decisions_every_hop(count: int, start: float = 100.0, labels=None, version="v0001", skip=()) -> list[dict]:
    """A decision per hop whose windows start where the playlist starts, optionally skipping some indices."""
    rows = []
    for k in range(count):
        if k in skip:
            continue
        window = [start + k * HOP, start + k * HOP + 3.0]
        truth = truth_of(window, start, PLAYLIST)
        rows.append({"time": start + k * HOP + 3.1, "window": window, "latency_ms": 100.0 + k,
                     "label": labels(k, truth) if labels else truth, "dropped_windows": sum(s < k for s in skip),
                     "model_version": version(k) if callable(version) else version})
    return rows


def test_a_window_belongs_to_the_clip_that_covers_two_thirds_of_it():
    assert truth_of([0.0, 3.0], 0.0, PLAYLIST) == "0"
    assert truth_of([3.9, 6.9], 0.0, PLAYLIST) == "1"  # 2.1 s of clip 1
    assert truth_of([1.5, 4.5], 0.0, PLAYLIST) is None  # half and half
    assert truth_of([30.0, 33.0], 0.0, PLAYLIST) == "0"  # the playlist loops


def test_the_soak_plan_learns_one_digit_every_interval_on_a_base_of_the_others():
    assert field_plan(60, 10) == (5, [(600.0, "5"), (1200.0, "6"), (1800.0, "7"), (2400.0, "8"), (3000.0, "9")])
    assert field_plan(1.5, 0.5) == (8, [(30.0, "8"), (60.0, "9")])
    assert field_plan(5, 10) == (10, [])


def test_soak_analysis_finds_the_gaps_the_drops_and_the_field_class_accuracy():
    # 700 hops; indices 400-402 dropped (a 4-hop gap); digit 9 learnt as v0002 from decision 300 on, and
    # recognised in every window after; before, the model calls it "0".
    def version(k):
        return "v0002" if k >= 300 else "v0001"

    def labels(k, truth):
        return "0" if truth == "9" and k < 300 else truth

    rows = decisions_every_hop(700, labels=labels, version=version, skip={400, 401, 402})
    samples = [{"time": 100.0 + t, "rss_mb": 800.0 + (t > 400) * 20.0, "open_fds": 20} for t in range(0, 700, 10)]
    learns = [{"label": "9", "version": "v0002", "start": 350.0, "end": 380.0, "returncode": 0}]
    result = analyse(rows, samples, learns, [], HOP, PLAYLIST, ["9"], started=100.0)
    assert result["dropped_windows"] == 3
    assert result["largest_gap_hops"] == 4.0 and result["gaps_over_2_hops"] == 1
    assert [b["decisions"] for b in result["buckets"]] == [297, 297, 103]  # 300 s each; the first at 3.1 s
    assert result["buckets"][1]["dropped_windows"] == 3 and result["buckets"][0]["dropped_windows"] == 0
    # Windows of digit 9 before it was learnt are not counted; straddling windows neither: all counted are right.
    assert [b["accuracy"] for b in result["buckets"]] == [1.0, 1.0, 1.0]
    [field] = result["field_classes"]
    assert field["recognised"] and field["accuracy_after"] == 1.0 and field["windows_after"] > 10
    assert result["rss"]["growth"] == 0.025 and result["open_fds"] == {"first": 20, "last": 20, "max": 20}


def test_a_field_class_never_decided_after_it_is_learnt_is_not_recognised():
    rows = decisions_every_hop(200, labels=lambda k, truth: "0" if truth == "9" else truth,
                               version=lambda k: "v0002" if k >= 50 else "v0001")
    learns = [{"label": "9", "version": "v0002", "start": 120.0, "end": 140.0, "returncode": 0}]
    [field] = analyse(rows, [], learns, [], HOP, PLAYLIST, ["9"], started=100.0)["field_classes"]
    assert field["accuracy_after"] == 0.0 and not field["recognised"]


def test_rss_growth_is_measured_from_the_end_of_the_warm_up():
    samples = [{"time": float(t), "rss_mb": 500.0 if t < 300 else 1000.0 + t / 100} for t in range(0, 3600, 60)]
    growth = rss_growth(samples, 300.0)
    assert growth["after_warmup_mb"] == 1003.0 and growth["max_after_mb"] == 1035.4
    assert np.isclose(growth["growth"], 1035.4 / 1003.0 - 1, atol=1e-4)


def test_process_resources_see_a_file_opened_and_closed():
    before = process_resources()
    with open(os.devnull) as f:
        assert process_resources()["open_fds"] == before["open_fds"] + 1
        assert f
    assert process_resources()["open_fds"] == before["open_fds"] and before["rss_mb"] > 10


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_competitors_burn_cpu_until_they_are_stopped():
    processes = start_competitors(2)
    try:
        # A loaded machine starts them late: wait for work, not for a fixed time. Each is working, not waiting or gone.
        wait_until(lambda: all(cpu_seconds(p.pid) >= 0.3 for p in processes), 30, "0.3 s of CPU in each competitor",
                   interval=0.1)
        assert all(p.poll() is None for p in processes)
    finally:
        stop_competitors(processes)
    assert all(p.returncode is not None for p in processes)


def test_each_decision_records_the_thread_settings_and_the_backend(tmp_path, toy_model, toy_clips):
    jsonl = tmp_path / "decisions.jsonl"
    clips = ",".join(str(p) for p in toy_clips["red"][:2])
    avcil("run", "--model", toy_model, "--camera", clips, "--mic", clips, "--hop", "0.5", "--threads", "1",
          "--jsonl", jsonl, "--quiet", timeout=120)
    decisions = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert decisions
    for decision in decisions:
        assert decision["backend"] == "torch"
        assert decision["threads"]["torch_intra_op"] == 1 and decision["threads"]["torch_inter_op"] == 1
        assert decision["threads"]["blas"] == 1 and decision["threads"]["onnxruntime_spinning"] == []
        assert decision["audio_missing"] is False  # file sources are never missing



def test_the_default_thread_count_is_the_measured_one_per_backend():
    from avcil.runtime.threads import RuntimeThreads

    cores = os.cpu_count() or 1
    assert RuntimeThreads(backend="torch").intra_op == 1
    assert RuntimeThreads(backend="onnxruntime").intra_op == min(2, cores)
    assert RuntimeThreads(3, backend="torch").intra_op == 3  # a count given wins
    # Nothing spins unless asked (avcil run --spin), and never in torch.
    assert RuntimeThreads(backend="onnxruntime").record()["onnxruntime_spinning"] == []
    spinning = RuntimeThreads(backend="onnxruntime", spinning=("audio_sfx",))
    assert spinning.record()["onnxruntime_spinning"] == ["audio_sfx"]
    assert RuntimeThreads(backend="torch", spinning=("audio_sfx",)).record()["onnxruntime_spinning"] == []
