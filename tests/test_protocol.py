"""The protocol end to end on the synthetic benchmark, through the command line a user runs."""

import json

import numpy as np
import pytest
import torch

from avcil.cli import main
from avcil.data.clips import ArrayClipSet
from avcil.data.synthetic import SyntheticSpec, synthetic_benchmark
from avcil.modeldir import ModelDir
from avcil.train.learner import Learner, TrainConfig, compute_dtype
from avcil.train.methods import build_method
from avcil.train.protocol import run_protocol
from support.models import joint_solution

FAST = ["--epochs", "6"]


def train(tmp_path, name, *extra):
    out = tmp_path / name
    assert main(["train", "--data", "synthetic", "--out", str(out), *FAST, *extra]) == 0
    return json.loads((out / "results.json").read_text()), out


def test_train_writes_results_plot_and_model(tmp_path):
    results, out = train(tmp_path, "r1", "--method", "avcil")
    for key in ("method", "dataset", "accuracy_matrix", "step_accuracy", "mean_accuracy",
                "mean_accuracy_excl_step0", "mean_forgetting", "config"):
        assert key in results
    steps = len(results["step_accuracy"])
    assert steps == 5 and len(results["accuracy_matrix"]) == steps
    assert all(row[s + 1:] == [None] * (steps - s - 1) for s, row in enumerate(results["accuracy_matrix"]))
    assert (out / "accuracy.png").stat().st_size > 10_000
    loaded = ModelDir(out / "model").load()
    assert len(loaded.class_names) == 20 and loaded.head.num_classes == 20
    assert len(loaded.memory) <= results["config"]["memory_budget"]
    assert [c["step"] for c in loaded.manifest["classes"]] == [c // 4 for c in range(20)]


def test_avcil_forgets_less_than_finetuning(tmp_path):
    avcil, _ = train(tmp_path, "a", "--method", "avcil")
    finetune, _ = train(tmp_path, "f", "--method", "finetune")
    assert avcil["mean_forgetting"] < finetune["mean_forgetting"]
    assert avcil["mean_accuracy"] > finetune["mean_accuracy"]


def test_runs_are_reproducible_under_a_seed():
    bench = synthetic_benchmark(SyntheticSpec(classes=6, steps=3, train_per_class=20))
    cfg = TrainConfig(epochs=3, batch_size=16, exemplar_batch_size=16)
    first, second = (run_protocol(bench, build_method("avcil"), cfg, 12, 16, progress=False).results
                     for _ in range(2))
    assert first["accuracy_matrix"] == second["accuracy_matrix"]


def test_bf16_training_learns_about_as_well_as_fp32():
    bench = synthetic_benchmark(SyntheticSpec(classes=4, steps=2, train_per_class=20))
    accuracy = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(epochs=8, batch_size=16, exemplar_batch_size=16, precision=precision)
        accuracy[precision] = run_protocol(bench, build_method("avcil"), cfg, 12, 16, progress=False).results[
            "mean_accuracy"]
    # Chance is 0.375 (two steps of two classes); bf16 products must not change what is learnt.
    assert accuracy["bf16"] > 0.42 and abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.05, accuracy


def test_training_precision_choices():
    assert compute_dtype("fp32") == torch.float32 and compute_dtype("bf16") == torch.bfloat16
    assert compute_dtype("auto") in (torch.float32, torch.bfloat16)  # by what this CPU computes natively
    with pytest.raises(ValueError, match="unknown training precision 'fp16'"):
        compute_dtype("fp16")


def test_upper_bound_trains_on_all_seen_data_in_one_step_as_in_ten(monkeypatch):
    """Run in ten steps, each step trains on every clip of the classes seen so far, so that its last step trains on
    what the one step of a one-step run trains on; the finetune lower bound, on the step's new classes alone."""
    trained: list[list[int]] = []
    learn_step = Learner.learn_step

    def noting(self, head, teacher, old, train, train_idx, *args, **kwargs):
        trained.append(sorted(int(i) for i in train_idx))
        return learn_step(self, head, teacher, old, train, train_idx, *args, **kwargs)

    monkeypatch.setattr(Learner, "learn_step", noting)
    config = TrainConfig(epochs=1, batch_size=8)
    for steps in (1, 10):
        bench = synthetic_benchmark(SyntheticSpec(classes=10, steps=steps, train_per_class=4))
        result = run_protocol(bench, build_method("upper"), config, 10, 8, progress=False)
        assert len(result.results["step_accuracy"]) == steps
    one, ten = trained[:1], trained[1:]
    labels = bench.splits["train"].labels
    assert len(ten) == 10 and ten[-1] == one[0] == list(range(40))
    for step, indices in enumerate(ten):
        assert sorted(set(labels[indices].tolist())) == list(range(step + 1)) and len(indices) == 4 * (step + 1)
    assert result.results["mean_forgetting"] is not None
    trained.clear()
    run_protocol(bench, build_method("finetune"), config, 10, 8, progress=False)
    assert [sorted(set(labels[indices].tolist())) for indices in trained] == [[step] for step in range(10)]


@pytest.mark.parametrize("argv, message", [
    (["--method", "avcil", "--memory-budget", "10"], "budget of 10 clips is smaller than the 20 classes"),
    (["--method", "avcil", "--steps", "3"], "20 classes cannot be split into 3 equal steps"),
])
def test_bad_settings_are_clear_errors(tmp_path, capsys, argv, message):
    assert main(["train", "--data", "synthetic", "--out", str(tmp_path / "x"), *FAST, *argv]) == 2
    assert message in capsys.readouterr().err


def test_unknown_method_and_data_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", "synthetic", "--method", "magic", "--out", str(tmp_path)])
    assert "invalid choice: 'magic'" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "not a feature store" in capsys.readouterr().err


def test_single_modality_avcil_needs_its_audio_visual_terms_removed(tmp_path, capsys):
    assert main(["train", "--data", "synthetic", "--method", "avcil", "--modality", "audio", "--out",
                 str(tmp_path / "a"), *FAST]) == 2
    assert "--without instance,class,vad" in capsys.readouterr().err
    results, _ = train(tmp_path, "b", "--method", "avcil", "--modality", "audio", "--without", "instance,class,vad")
    assert results["config"]["modality"] == "audio"


def test_the_analytic_method_after_five_steps_equals_one_fit_on_all_classes():

    # Exemplar-free and exact: five closed-form updates give the ridge solution of one fit over every clip.
    bench = synthetic_benchmark(SyntheticSpec(classes=10, steps=5, train_per_class=12))
    head = run_protocol(bench, build_method("analytic"), TrainConfig(epochs=1), 20, 16, progress=False).head
    train = bench.splits["train"]
    audio, visual = (torch.from_numpy(x) for x in train.load(range(len(train.labels))))
    with torch.no_grad():
        inputs = head.readout_inputs(audio, visual, head(audio, visual).fused)
    expected = joint_solution(head.readout, inputs, train.labels)
    np.testing.assert_allclose(head.readout.weight.numpy(), expected, rtol=1e-3, atol=1e-5)


def test_the_default_model_is_its_readout_alone_and_decides_as_it_did_beside_an_untrained_fusion_part():
    from avcil.model.head import FusionHead, HeadConfig
    from avcil.train.learner import fit_readout

    bench = synthetic_benchmark(SyntheticSpec(classes=6, steps=3, train_per_class=10))
    config, method = TrainConfig(epochs=1), build_method("analytic")
    head = run_protocol(bench, method, config, 12, 16, progress=False).head
    assert not head.has_fusion and list(head.parameters()) == []
    # What the protocol built before: the fusion part, never trained, with the readout fitted beside it per step.
    torch.manual_seed(config.seed)
    before = FusionHead(HeadConfig.for_shape(bench.shape, 16))
    for step in bench.steps:
        before.add_classes(len(step))
        fit_readout(before, method.readout, bench.splits["train"], bench.indices("train", step), config)
    torch.testing.assert_close(head.readout.state_dict(), before.readout.state_dict(), rtol=0, atol=0)
    test = bench.splits["test"]
    audio, visual = (torch.from_numpy(x) for x in test.load(range(len(test.labels))))
    with torch.no_grad():
        assert torch.equal(head(audio, visual).logits, before(audio, visual).logits)


def test_gradient_methods_and_readouts_of_the_fused_feature_keep_the_fusion_part():
    assert not build_method("analytic").uses_fusion and not build_method("simplecil").uses_fusion
    for name in ("avcil", "ss-il", "lwf", "icarl", "icarl-fc", "afc", "finetune", "upper"):
        assert build_method(name).uses_fusion, name
    for features in ("fused", "both"):
        assert build_method("analytic", readout_features=features).uses_fusion
    assert build_method("simplecil", classifier="fc").uses_fusion  # the linear classifier decides


def test_faithful_avcil_trains_step_zero_with_cross_entropy_only():
    from avcil.train.learner import Learner
    from avcil.model.head import FusionHead, HeadConfig

    bench = synthetic_benchmark(SyntheticSpec(classes=4, steps=2, train_per_class=8))
    head = FusionHead(HeadConfig.for_shape(bench.shape, 16), num_classes=2)
    report = Learner(build_method("avcil"), TrainConfig(epochs=1, batch_size=8), progress=False).learn_step(
        head, None, [], bench.splits["train"], bench.indices("train", [0, 1]), None)
    assert {k for k in report.loss_history[0] if k not in ("epoch", "val_accuracy")} == {"ce", "kd", "vad"}


def test_mixed_batches_draw_every_exemplar_once_per_epoch_beside_the_new_clips():
    from avcil.train.learner import batches

    bench = synthetic_benchmark(SyntheticSpec(classes=4, steps=2, train_per_class=10))
    train = bench.splits["train"]
    new = bench.indices("train", [2, 3])
    exemplars = ArrayClipSet(["e0", "e1", "e2"], [0, 1, 1], *train.load([0, 10, 11]))
    drawn = [b for b in batches(train, new, 8, True, 0, extra=exemplars)]
    flags = torch.cat([b[3] for b in drawn])
    labels = torch.cat([b[2] for b in drawn])
    assert len(flags) == len(new) + 3 and int(flags.sum()) == 3  # natural proportion: 3 of 23
    assert sorted(labels[flags].tolist()) == [0, 1, 1] and set(labels[~flags].tolist()) == {2, 3}


def test_results_record_the_whole_method_definition(tmp_path):
    results, _ = train(tmp_path, "i", "--method", "icarl")
    method = results["config"]["method"]
    assert method["batch"] == "mixed" and method["classifier"] == "nme" and method["memory"] == "herding"
    assert [(t["type"], t["from_step"]) for t in method["terms"]] == [("CrossEntropy", 0), ("SigmoidDistillation", 0)]
    analytic, _ = train(tmp_path, "d")  # the default method
    assert analytic["method"] == "analytic" and analytic["config"]["method"]["readout"]["kind"] == "analytic"
