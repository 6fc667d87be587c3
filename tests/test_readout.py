"""The closed-form readouts against numpy, and a head that decides by one through export and ONNX Runtime."""


import numpy as np
import onnxruntime as ort
import torch

from avcil.model.encoders import load_profile
from avcil.model.head import FusionHead, HeadConfig
from avcil.model.readout import AnalyticReadout, MeanReadout, pooled_features, readout_spec
from avcil.modeldir import ModelDir
from support.models import ridge_solution


def test_analytic_readout_is_ridge_regression_over_its_expansion():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    readout = AnalyticReadout(readout_spec("analytic", expansion=16, ridge=0.5, seed=3), in_dim=6, num_classes=3)
    readout.accumulate(torch.from_numpy(x[:25]), torch.from_numpy(labels[:25]))  # two updates = one fit
    readout.accumulate(torch.from_numpy(x[25:]), torch.from_numpy(labels[25:]))
    readout.solve()
    # Standardised by the first clips it saw, then expanded; the ridge is relative to the Gram's mean diagonal.
    first = x[:25].astype(np.float64)
    standard = (x - first.mean(axis=0)) / ((first.std(axis=0, ddof=1) + 1e-6) * np.sqrt(6))
    expected = ridge_solution(standard, labels, readout.expand.numpy(), 0.5, 3)
    np.testing.assert_allclose(readout.weight.numpy(), expected, rtol=1e-4, atol=1e-5)
    phi = np.maximum(standard @ readout.expand.numpy().astype(np.float64), 0)
    scores = readout(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(scores, 10.0 * phi @ expected, rtol=1e-3, atol=1e-4)


def test_the_same_seed_rebuilds_the_same_expansion_and_a_saved_readout_loads():
    spec = readout_spec("analytic", expansion=8, seed=5)
    first, second = AnalyticReadout(spec, 4, 2), AnalyticReadout(spec, 4, 2)
    torch.testing.assert_close(first.expand, second.expand)
    first.accumulate(torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1]))
    first.solve()
    second.load_state_dict(first.state_dict())
    torch.testing.assert_close(second.weight, first.weight)
    assert "expand" not in first.state_dict()  # regenerated from the seed, not stored in every version


def test_mean_readout_is_cosine_to_each_class_mean():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    readout = MeanReadout(readout_spec("mean", scale=1.0), in_dim=2, num_classes=2)
    readout.accumulate(x, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(readout(torch.tensor([[1.0, 1.0]])), torch.tensor([[2 ** -0.5, 2 ** -0.5]]))


def test_pooled_features_normalise_audio_and_the_mean_and_max_of_the_tokens():
    audio, visual = torch.randn(2, 5), torch.randn(2, 3, 4, 6)
    pooled = pooled_features(audio, visual)
    assert pooled.shape == (2, 5 + 2 * 6)
    torch.testing.assert_close(pooled[:, :5].norm(dim=1), torch.ones(2))
    torch.testing.assert_close(pooled[:, 5:11], torch.nn.functional.normalize(visual.mean(dim=(1, 2)), dim=1))


def test_a_head_deciding_by_its_analytic_readout_traces_to_onnx_and_runs_the_same_in_onnxruntime(tmp_path):
    # The recogniser runs the head in torch; the latency benchmark times it in every backend, so it must trace.
    from avcil.export.onnx import export_graph
    from avcil.model.graphs import HeadLogits, head_graph

    tiny = load_profile("tiny")
    torch.manual_seed(0)
    head = FusionHead(HeadConfig.for_shape(tiny.shape), num_classes=3)
    head.set_readout(readout_spec("analytic", expansion=32))
    audio, visual = torch.randn(12, tiny.shape.audio_dim), torch.randn(12, *tiny.shape.visual)
    with torch.no_grad():
        head.readout.accumulate(head.readout_inputs(audio, visual, head(audio, visual).fused), torch.arange(12) % 3)
    head.readout.solve()
    root = tmp_path / "model"
    ModelDir(root).commit(head, None, [{"name": f"c{i}", "step": 0} for i in range(3)],
                          {"shape": tiny.shape.to_dict(), "profile": tiny.describe()})
    loaded = ModelDir(root).load().head.eval()
    export_graph(HeadLogits(loaded).eval(), [audio[:2], visual[:2]], tmp_path / "head.onnx", head_graph())
    session = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"audio_embedding": audio.numpy(), "visual_tokens": visual.numpy()})
    with torch.no_grad():
        expected = loaded(audio, visual)
    assert expected.classifier_logits is not None  # the readout decides, not the linear classifier
    np.testing.assert_allclose(logits, expected.logits.numpy(), rtol=1e-4, atol=1e-4)
