import numpy as np
import pytest
import torch

from avcil.errors import InvalidInput
from avcil.features import FeatureShape
from avcil.model.head import FusionHead, HeadConfig


def np_softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_attention_matches_the_equations_in_numpy():
    torch.manual_seed(1)
    head = FusionHead(HeadConfig(audio_dim=3, visual_dim=4, fusion_dim=5), num_classes=2)
    audio, visual = torch.randn(2, 3), torch.randn(2, 3, 6, 4)
    out = head(audio, visual)
    w = {k: v.detach().numpy().astype(np.float64) for k, v in head.state_dict().items()}
    a, V = audio.numpy().astype(np.float64), visual.numpy().astype(np.float64)
    qa = np.tanh(a @ w["audio_query.weight"].T + w["audio_query.bias"])  # [B, Dv]
    K = np.tanh(V @ w["visual_key.weight"].T + w["visual_key.bias"])  # [B, T, S, Dv]
    alpha = np_softmax(K * qa[:, None, None, :], axis=2)
    u = (alpha * K).sum(axis=2)
    beta = np_softmax(u * qa[:, None, :], axis=1)
    pooled = (beta * (alpha * V).sum(axis=2)).sum(axis=1)
    ha = np.maximum(a @ w["audio_proj.weight"].T + w["audio_proj.bias"], 0)
    hv = np.maximum(pooled @ w["visual_proj.weight"].T + w["visual_proj.bias"], 0)
    logits = (ha + hv) @ w["classifier.weight"].T + w["classifier.bias"]
    np.testing.assert_allclose(out.spatial_attn.detach().numpy(), alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.temporal_attn.detach().numpy(), beta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.logits.detach().numpy(), logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.audio_embed.detach().numpy(), ha / np.linalg.norm(ha, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_growing_keeps_old_rows_and_adds_new_ones():
    head = FusionHead(HeadConfig(3, 4, 5), num_classes=2)
    old_weight = head.classifier.weight.detach().clone()
    audio, visual = torch.randn(4, 3), torch.randn(4, 2, 3, 4)
    before = head(audio, visual).logits.detach()
    head.add_classes(3)
    after = head(audio, visual).logits.detach()
    assert head.num_classes == 5 and after.shape == (4, 5)
    torch.testing.assert_close(head.classifier.weight[:2].detach(), old_weight)
    torch.testing.assert_close(after[:, :2], before)


def test_single_modality_variants():
    shape = FeatureShape(3, 2, 3, 4)
    audio, visual = torch.randn(4, 3), torch.randn(4, *shape.visual)
    audio_only = FusionHead(HeadConfig.for_shape(shape, 5, "audio"), 2)
    out = audio_only(audio, visual)
    assert out.visual_embed is None and out.spatial_attn is None
    # Audio-only ignores the video entirely.
    torch.testing.assert_close(out.logits, audio_only(audio, torch.zeros_like(visual)).logits)
    visual_only = FusionHead(HeadConfig.for_shape(shape, 5, "visual"), 2)
    w = visual_only.visual_proj
    expected = visual_only.classifier(torch.relu(w(visual.mean(dim=(1, 2)))))
    torch.testing.assert_close(visual_only(audio, visual).logits, expected)


def test_unknown_modality_is_refused():
    with pytest.raises(ValueError, match="modality"):
        HeadConfig(3, 4, 5, modality="smell")


def test_a_bf16_forward_gives_the_losses_float32_summaries_and_keeps_the_maps():
    head = FusionHead(HeadConfig(5, 4, 6), num_classes=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(2, 5), torch.randn(2, 2, 3, 4)).for_losses()
    assert {out.logits.dtype, out.fused.dtype, out.audio_embed.dtype, out.visual_embed.dtype} == {torch.float32}
    assert out.spatial_attn.dtype == out.temporal_attn.dtype == torch.bfloat16  # the big ones stay as computed
    torch.testing.assert_close(out.spatial_attn.float().sum(dim=2), torch.ones(2, 2, 4), atol=2e-2, rtol=0)


def pooled_readout_head(fusion: bool, classes: int = 2) -> FusionHead:
    from avcil.model.readout import readout_spec

    torch.manual_seed(0)
    return FusionHead(HeadConfig(5, 4, 6, readout=readout_spec("analytic", expansion=16), fusion=fusion), classes)


def test_a_model_without_the_fusion_part_is_its_readout_alone_and_decides_as_one_with_it():
    head, with_fusion = pooled_readout_head(fusion=False), pooled_readout_head(fusion=True)
    assert not head.has_fusion and with_fusion.has_fusion
    assert list(head.parameters()) == [] and head.classifier is None
    assert all(name.startswith("readout.") for name in head.state_dict())
    audio, visual = torch.randn(8, 5), torch.randn(8, 2, 3, 4)
    for model in (head, with_fusion):  # fitted alike (a loaded weight can differ in memory layout, and so in bits)
        model.readout.accumulate(model.readout_inputs(audio, visual), torch.arange(8) % 2)
        model.readout.solve()
    out = head(audio, visual)
    assert torch.equal(out.logits, with_fusion(audio, visual).logits)  # the readout decides either way
    assert out.fused is None and out.classifier_logits is None and out.spatial_attn is None
    head.add_classes(1)
    assert head.num_classes == 3 and head(audio, visual).logits.shape == (8, 3)
    with pytest.raises(InvalidInput, match="needs the fusion part, which this model does not have"):
        head.features(audio, visual)


def test_a_model_without_the_fusion_part_decides_by_a_readout_of_the_pooled_features_only():
    from avcil.model.readout import readout_spec

    for readout in (None, readout_spec("analytic", "fused"), readout_spec("mean", "both")):
        with pytest.raises(InvalidInput, match="without the fusion part decides by a readout of the encoders' pooled"):
            HeadConfig(5, 4, 6, readout=readout, fusion=False)
    head = pooled_readout_head(fusion=False)
    for readout in (None, readout_spec("mean", "fused")):  # nothing would be left to decide, or to read
        with pytest.raises(InvalidInput, match="pooled"):
            head.set_readout(readout)
    head.set_readout(readout_spec("mean"))
    assert head.config.readout["kind"] == "mean" and head.num_classes == 2 and not head.has_fusion


def test_a_head_record_from_before_the_fusion_flag_keeps_the_fusion_part_only_where_it_was_used():
    from avcil.model.head import load_head

    old = pooled_readout_head(fusion=True)
    record = {k: v for k, v in old.config.to_dict().items() if k != "fusion"}  # as written before the flag
    untrained = load_head(record, old.state_dict(), 2, trained_by_gradient=False)
    assert not untrained.has_fusion and set(untrained.state_dict()) == set(old.readout.state_dict(prefix="readout."))
    trained = load_head(record, old.state_dict(), 2, trained_by_gradient=True)
    assert trained.has_fusion
    torch.testing.assert_close(trained.state_dict(), old.state_dict(), rtol=0, atol=0)
    linear = FusionHead(HeadConfig(5, 4, 6), 2)  # the linear classifier decides: the fusion part is used
    plain = {k: v for k, v in linear.config.to_dict().items() if k != "fusion"}
    assert load_head(plain, linear.state_dict(), 2, trained_by_gradient=False).has_fusion
