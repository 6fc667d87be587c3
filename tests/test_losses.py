"""Each loss term against values computed independently here in numpy, and against its invariants."""

import copy

import numpy as np
import pytest
import torch

from avcil.model import losses
from avcil.model.head import FusionHead, HeadConfig, HeadOutput
from avcil.model.losses import LossInputs


def np_log_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def tiny():
    """A batch of 6 clips: 4 new (classes 3-4), 2 exemplars (classes 0-2, two earlier tasks [0,2) and [2,3))."""
    torch.manual_seed(0)
    head = FusionHead(HeadConfig(audio_dim=5, visual_dim=4, fusion_dim=6), num_classes=3)
    teacher = copy.deepcopy(head).requires_grad_(False)
    head.add_classes(2)
    with torch.no_grad():  # make the student differ from the teacher
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    audio, visual = torch.randn(6, 5), torch.randn(6, 3, 7, 4)
    labels = torch.tensor([3, 4, 4, 3, 0, 2])
    is_exemplar = torch.tensor([False, False, False, False, True, True])
    x = LossInputs(head(audio, visual), teacher(audio, visual), labels, is_exemplar, [(0, 2), (2, 3)])
    return x, head, teacher, (audio, visual)


def arr(t):
    return t.detach().numpy().astype(np.float64)


def test_split_cross_entropy_matches_numpy(tiny):
    x = tiny[0]
    z, y, ex = arr(x.out.logits), x.labels.numpy(), x.is_exemplar.numpy()
    new_terms = -np_log_softmax(z[~ex, 3:])[np.arange(4), y[~ex] - 3]
    old_terms = -np_log_softmax(z[ex, :3])[np.arange(2), y[ex]]
    expected = (new_terms.sum() + old_terms.sum()) / 6
    assert float(losses.CrossEntropy(split=True)(x)) == pytest.approx(expected, rel=1e-5)
    plain = -np_log_softmax(z)[np.arange(6), y].mean()
    assert float(losses.CrossEntropy(split=False)(x)) == pytest.approx(plain, rel=1e-5)


def test_split_cross_entropy_is_plain_at_step_zero(tiny):
    x = tiny[0]
    first = LossInputs(x.out, None, x.labels, torch.zeros(6, dtype=torch.bool), [])
    assert float(losses.CrossEntropy(split=True)(first)) == pytest.approx(float(losses.CrossEntropy()(first)))


def test_taskwise_distillation_matches_numpy(tiny):
    x = tiny[0]
    z, z_old, T = arr(x.out.logits), arr(x.old.logits), 2.0
    expected = 0.0
    for s, e in [(0, 2), (2, 3)]:
        p_old = np.exp(np_log_softmax(z_old[:, s:e] / T))
        kl = (p_old * (np.log(p_old) - np_log_softmax(z[:, s:e] / T))).sum(axis=1).mean()
        expected += T * T * kl
    assert float(losses.Distillation(T, taskwise=True)(x)) == pytest.approx(expected, rel=1e-5)
    # The task with a single class has a one-point distribution: task-wise KD differs from KD over all old logits.
    p_all = np.exp(np_log_softmax(z_old[:, :3] / T))
    whole = T * T * (p_all * (np.log(p_all) - np_log_softmax(z[:, :3] / T))).sum(axis=1).mean()
    assert float(losses.Distillation(T, taskwise=False)(x)) == pytest.approx(whole, rel=1e-5)


def test_instance_contrast_matches_numpy(tiny):
    x = tiny[0]
    sim = arr(x.out.audio_embed) @ arr(x.out.visual_embed).T / 0.05
    expected = -np.diag(np_log_softmax(sim, axis=1)).mean()
    assert float(losses.InstanceContrast(0.05)(x)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("normalise", ["batch", "positives"])
def test_class_contrast_matches_numpy(tiny, normalise):
    x = tiny[0]
    a, v, y = arr(x.out.audio_embed), arr(x.out.visual_embed), x.labels.numpy()
    logp = np_log_softmax(a @ v.T / 0.05, axis=1)
    per_anchor = []
    for i in range(6):
        positives = [j for j in range(6) if y[j] == y[i]]
        total = -sum(logp[i, j] for j in positives)
        per_anchor.append(total / (len(positives) if normalise == "positives" else 6))
    assert float(losses.ClassContrast(0.05, normalise)(x)) == pytest.approx(np.mean(per_anchor), rel=1e-5)


def test_attention_distillation_matches_numpy(tiny):
    x = tiny[0]
    ex = x.is_exemplar.numpy()

    def kl(old, new):
        return (old * (np.log(old) - np.log(new))).sum()

    spatial = kl(arr(x.old.spatial_attn)[ex], arr(x.out.spatial_attn)[ex])
    temporal = kl(arr(x.old.temporal_attn)[ex], arr(x.out.temporal_attn)[ex])
    expected = (0.5 * spatial + 0.5 * temporal) / ex.sum()
    assert float(losses.AttentionDistillation(0.5)(x)) == pytest.approx(expected, rel=1e-4)


def test_teacher_terms_vanish_when_the_model_equals_the_teacher(tiny):
    _, _, teacher, (audio, visual) = tiny
    out = teacher(audio, visual)
    x = LossInputs(out, out, torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([True] * 3 + [False] * 3), [(0, 2), (2, 3)])
    assert float(losses.Distillation()(x)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.AttentionDistillation()(x)) == pytest.approx(0.0, abs=1e-6)


def test_attention_distillation_ignores_new_clips(tiny):
    x, *_ = tiny
    before = float(losses.AttentionDistillation()(x))
    scrambled_alpha = x.out.spatial_attn.clone()
    scrambled_alpha[~x.is_exemplar] = scrambled_alpha[~x.is_exemplar].flip(2)  # change only new clips' maps
    changed = HeadOutput(x.out.logits, x.out.fused, x.out.audio_embed, x.out.visual_embed, scrambled_alpha,
                         x.out.temporal_attn)
    after = float(losses.AttentionDistillation()(LossInputs(changed, x.old, x.labels, x.is_exemplar, x.old_task_ranges)))
    assert after == pytest.approx(before)
    no_exemplars = LossInputs(x.out, x.old, x.labels, torch.zeros(6, dtype=torch.bool), x.old_task_ranges)
    assert float(losses.AttentionDistillation()(no_exemplars)) == 0.0


def test_contrast_rewards_aligned_embeddings(tiny):
    x = tiny[0]
    aligned = HeadOutput(x.out.logits, x.out.fused, x.out.audio_embed, x.out.audio_embed, None, None)
    aligned_x = LossInputs(aligned, None, x.labels, x.is_exemplar, [])
    assert float(losses.InstanceContrast()(aligned_x)) < float(losses.InstanceContrast()(x))


def test_terms_that_need_both_modalities_refuse_an_audio_only_head():
    head = FusionHead(HeadConfig(5, 4, 6, modality="audio"), num_classes=2)
    out = head(torch.randn(3, 5), torch.randn(3, 2, 2, 4))
    x = LossInputs(out, out, torch.tensor([0, 1, 0]), torch.tensor([True, False, True]), [(0, 1)])
    with pytest.raises(ValueError, match="instance"):
        losses.InstanceContrast()(x)
    with pytest.raises(ValueError, match="vad"):
        losses.AttentionDistillation()(x)


def test_class_contrast_rejects_unknown_normalisation():
    with pytest.raises(ValueError, match="normalise"):
        losses.ClassContrast(normalise="sum")


def test_sigmoid_distillation_matches_the_published_icarl_form(tiny):
    x = tiny[0]
    z, z_old = arr(x.out.logits)[:, :3], arr(x.old.logits)[:, :3]
    q = 1 / (1 + np.exp(-z_old))
    p = 1 / (1 + np.exp(-z))
    expected = -(q * np.log(p) + (1 - q) * np.log(1 - p)).mean()
    assert float(losses.SigmoidDistillation()(x)) == pytest.approx(expected, rel=1e-5)


def test_terms_say_from_which_step_they_apply():
    from avcil.train.methods import build_method

    avcil = build_method("avcil")
    assert [t.name for t in avcil.terms_at(0)] == ["ce", "kd", "vad"]  # the authors' step 0: CE (KD, VAD are 0)
    assert [t.name for t in avcil.terms_at(1)] == ["ce", "kd", "instance", "class", "vad"]
    # A closed-form method trains the head at its base step only, and not at all on the encoders' features.
    assert [t.name for t in build_method("analytic", readout_features="fused").terms_at(1)] == []
    assert build_method("analytic", readout_features="pooled").terms == []


def test_importance_weighted_feature_distillation_matches_numpy(tiny):
    x, head, teacher, _ = tiny
    x = losses.LossInputs(x.out, x.old, x.labels, x.is_exemplar, x.old_task_ranges, teacher.classifier.weight)
    ex = x.is_exemplar.numpy()
    z_old = arr(x.old.logits)[ex, :3]
    p = np.exp(np_log_softmax(z_old))
    y = np.eye(3)[x.labels.numpy()[ex]]
    importance = (((p - y) @ arr(teacher.classifier.weight)[:3]) ** 2).mean(axis=0)
    importance /= importance.mean()
    expected = (importance * (arr(x.out.fused) - arr(x.old.fused)) ** 2).sum(axis=1).mean()
    assert float(losses.ImportanceFeatureDistillation()(x)) == pytest.approx(expected, rel=1e-5)
    same = losses.LossInputs(x.old, x.old, x.labels, x.is_exemplar, x.old_task_ranges, teacher.classifier.weight)
    assert float(losses.ImportanceFeatureDistillation()(same)) == 0.0
