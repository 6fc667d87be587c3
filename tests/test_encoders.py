import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from transformers import VideoMAEForPreTraining, VideoMAEModel

from avcil.model.encoders import load_profile
from avcil.model.encoders import paper
from avcil.model.encoders.paper import (audiomae_checkpoint_filter, audiomae_config, load_audiomae,
                                        load_videomae, videomae_frames)
from avcil.model.encoders.tiny import tiny_video_config
from support.models import SMALL, save_checkpoint, timm_audiomae_state

ASTERISK = Path("/usr/share/asterisk/sounds")
RNG = np.random.default_rng(0)

# A small AudioMAE: fbank 64 x 32 in 16x16 patches -> 8 tokens + cls.
def reference_audiomae(state: dict, fbank: torch.Tensor, heads: int) -> torch.Tensor:
    """AudioMAE's encoder + global pool written directly on the timm-layout keys (independent of transformers)."""
    x = F.conv2d(fbank, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x], dim=1) + state["pos_embed"]
    batch, tokens, dim = x.shape
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(layers):
        w = {k[len(f"blocks.{i}."):]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (dim,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        qkv = F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"]).reshape(batch, tokens, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) * (dim // heads) ** -0.5, dim=-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + F.linear(h, w["attn.proj.weight"], w["attn.proj.bias"])
        h = F.layer_norm(x, (dim,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"])),
                         w["mlp.fc2.weight"], w["mlp.fc2.bias"])
    norm = "fc_norm" if "fc_norm.weight" in state else "norm"
    return F.layer_norm(x[:, 1:].mean(dim=1), (dim,), state[f"{norm}.weight"], state[f"{norm}.bias"], eps=1e-6)


@pytest.mark.parametrize("finetuned", [False, True], ids=["pretrained-norm", "finetuned-fc_norm"])
def test_audiomae_checkpoint_maps_onto_the_vit_with_identical_outputs(tmp_path, finetuned):
    state = timm_audiomae_state(**SMALL, finetuned=finetuned)
    encoder = load_audiomae(save_checkpoint(tmp_path / "audiomae.pth", state), audiomae_config(**SMALL))
    fbank = torch.randn(3, 1, SMALL["frames"], SMALL["mel_bins"])
    with torch.no_grad():
        ours, reference = encoder(fbank), reference_audiomae(state, fbank, SMALL["heads"])
    assert ours.shape == (3, SMALL["hidden"])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_a_videomae_folder_without_encoder_weights_is_refused(tmp_path):
    folder = tmp_path / "not-videomae"
    torch.manual_seed(1)
    VideoMAEModel(tiny_video_config()).save_pretrained(folder)
    weights = folder / "model.safetensors"
    tensors = {k: v for k, v in safetensors.torch.load_file(weights).items() if "layer.1." not in k}
    safetensors.torch.save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not-videomae.*weights missing"):
        load_videomae(folder)


def test_audiomae_filter_refuses_foreign_or_incomplete_checkpoints(tmp_path):
    state = timm_audiomae_state(**SMALL, finetuned=False)
    with pytest.raises(KeyError, match="rel_pos"):
        audiomae_checkpoint_filter({**state, "blocks.0.attn.rel_pos_h": torch.zeros(3)})
    incomplete = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    path = save_checkpoint(tmp_path / "partial.pth", incomplete, wrap="")
    with pytest.raises(ValueError, match="partial.pth.*not an AudioMAE"):
        load_audiomae(path, audiomae_config(**SMALL))


@pytest.fixture
def videomae_dir(tmp_path) -> Path:
    """A pretraining checkpoint (encoder + MAE decoder), the layout of MCG-NJU/videomae-base."""
    torch.manual_seed(1)
    model = VideoMAEForPreTraining(tiny_video_config())
    folder = tmp_path / "videomae"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5],
                                                                 "image_std": [0.25, 0.25, 0.25]}))
    return folder


def test_videomae_folder_loads_back_and_gives_grouped_tokens(videomae_dir):
    encoder, weights_file = load_videomae(videomae_dir)
    original = VideoMAEForPreTraining.from_pretrained(videomae_dir).videomae.eval()
    frames = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        tokens = encoder.eval()(frames)
        expected = original(pixel_values=frames).last_hidden_state
    assert tokens.shape == (2, 2, 4, 32)  # 4 frames / tubelet 2 = 2 groups, (32/16)^2 = 4 positions
    torch.testing.assert_close(tokens.reshape(2, 8, 32), expected)
    assert weights_file.name == "model.safetensors"
    prep = videomae_frames(videomae_dir, encoder.model.config)
    assert (prep.count, prep.size, prep.mean, prep.std) == (4, 32, (0.5,) * 3, (0.25,) * 3)


def test_paper_profile_loads_both_files_and_records_their_checksums(tmp_path, videomae_dir, monkeypatch):
    # The paper's input sizes (1024 x 128 fbank) with a narrow, shallow ViT, so that the test stays small.
    small = functools.partial(audiomae_config, hidden=32, layers=1, heads=2, mlp=64)
    monkeypatch.setattr(paper, "audiomae_config", small)
    state = timm_audiomae_state(1024, 128, 32, 1, 2, 64, finetuned=False)
    checkpoint = save_checkpoint(tmp_path / "pretrained.pth", state)
    profile = load_profile("paper", audiomae=checkpoint, videomae=videomae_dir)
    assert profile.audio_input_shape == (1, 1024, 128)
    assert profile.settings["audio"]["sample_rate"] == 11430 and profile.settings["audio"]["normalize"] is False
    assert profile.settings["weights"]["audiomae"]["file"] == "pretrained.pth"
    assert len(profile.settings["weights"]["videomae"]["sha256"]) == 64
    waveform = RNG.standard_normal(16000).astype(np.float32)
    features = profile.encode(waveform, 16000, [RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)] * 4)
    profile.shape.check(features.audio, features.visual, "paper profile")
    fbank = torch.from_numpy(profile.preprocess_audio(waveform, 16000)[None])
    np.testing.assert_allclose(features.audio, reference_audiomae(state, fbank, heads=2)[0].numpy(), atol=1e-5)


def test_paper_profile_names_the_missing_file_and_what_it_should_be(tmp_path, videomae_dir):
    with pytest.raises(FileNotFoundError, match=r"audiomae.*nope\.pth.*AudioMAE ViT-B/16 checkpoint"):
        load_profile("paper", audiomae=tmp_path / "nope.pth", videomae=videomae_dir)
    (tmp_path / "there.pth").touch()
    with pytest.raises(FileNotFoundError, match=r"videomae.*missing.*VideoMAE-base model folder"):
        load_profile("paper", audiomae=tmp_path / "there.pth", videomae=tmp_path / "missing")
    with pytest.raises(ValueError, match="random_init=True"):
        load_profile("paper")
    with pytest.raises(ValueError, match="unknown encoder profile"):
        load_profile("huge")


def test_paper_profile_with_random_weights_has_the_paper_shapes():
    profile = load_profile("paper", random_init=True)
    assert profile.audio_input_shape == (1, 1024, 128) and profile.visual_input_shape == (16, 3, 224, 224)
    assert profile.shape.to_dict() == {"audio_dim": 768, "time": 8, "positions": 196, "visual_dim": 768}
    audio, visual = profile.encode_batch(np.zeros((1, 1, 1024, 128), np.float32),
                                         np.zeros((1, 16, 3, 224, 224), np.float32))
    assert audio.shape == (1, 768) and visual.shape == (1, 8, 196, 768)


def test_tiny_profile_is_deterministic_and_tells_clips_apart():
    first, second = load_profile("tiny"), load_profile("tiny")
    clips = [(RNG.standard_normal(20000).astype(np.float32), [RNG.integers(0, 256, (48, 64, 3), np.uint8)] * 4)
             for _ in range(2)]
    a, b = (first.encode(w, 16000, f) for w, f in clips)
    again = second.encode(clips[0][0], 16000, clips[0][1])
    np.testing.assert_array_equal(a.audio, again.audio)
    np.testing.assert_array_equal(a.visual, again.visual)
    assert a.audio.shape == (24,) and a.visual.shape == (2, 4, 32)
    assert not np.allclose(a.audio, b.audio) and not np.allclose(a.visual, b.visual)


def onnx_round_trip(module: torch.nn.Module, input_shape: tuple[int, ...], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Export with a batch of 1 and a dynamic batch axis (opset 17), run `batch` clips in ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime")
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.zeros(1, *input_shape),), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((batch, *input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    return session.run(None, {"x": x})[0], expected


@pytest.mark.parametrize("name", ["tiny", "lite"])
def test_encoders_export_to_onnx_with_a_dynamic_batch(name):
    profile = load_profile(name)
    for module, shape in ((profile.audio, profile.audio_input_shape), (profile.visual, profile.visual_input_shape)):
        got, expected = onnx_round_trip(module, shape, batch=3)
        assert got.shape == expected.shape and got.shape[0] == 3
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def lite():
    return load_profile("lite")


def test_lite_frame_cnn_has_real_imagenet_weights(lite):
    skimage_data = pytest.importorskip("skimage.data")
    frames = lite.preprocess_frames([skimage_data.chelsea()] * lite.frame_prep.count)
    with torch.no_grad():
        logits = lite.visual.features.cnn(torch.from_numpy(frames[:1]))  # the whole CNN, with its classifier
        tokens = lite.visual(torch.from_numpy(frames[None]))
    assert 281 <= int(logits.argmax()) <= 285  # ImageNet's cat classes: the photo is of a cat
    assert tokens.shape == (1, *lite.shape.visual)


def embed_wav(profile, path: Path) -> np.ndarray:
    soundfile = pytest.importorskip("soundfile")
    if not path.exists():
        pytest.skip(f"{path} missing: apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav")
    waveform, rate = soundfile.read(path, dtype="float32")
    audio, _ = profile.encode_batch(profile.preprocess_audio(waveform, rate)[None],
                                    np.zeros((1, *profile.visual_input_shape), np.float32))
    return audio[0] / np.linalg.norm(audio[0])


def test_lite_audio_cnn_embeds_speech_nearer_speech_than_tones(lite):
    en, es = ASTERISK / "en_US_f_Allison", ASTERISK / "es_MX_f_Allison"
    speech = [embed_wav(lite, p) for p in (en / "digits/1.wav", en / "digits/7.wav", es / "digits/7.wav")]
    tones = [embed_wav(lite, p) for p in (en / "beep.wav", en / "ascending-2tone.wav")]
    within = min(float(a @ b) for i, a in enumerate(speech) for b in speech[i + 1:])
    across = max(float(a @ t) for a in speech for t in tones)
    assert within > across + 0.03
    # aiSFX 512 + the speech embedding's mean and max 2 x 96; input: aiSFX's 131 x 96 mel, then 3 s at 16 kHz.
    assert lite.shape.audio_dim == 704 and lite.audio_input_shape == (131 * 96 + 48000,)


def test_lite_sound_events_get_the_same_aisfx_vector_as_before_the_speech_embedding(lite):
    """The sound-event part of the lite audio vector is aiSFX on its own spectrogram, unchanged."""
    from avcil.data.preprocess import SfxMel
    from avcil.model.encoders.lite import SpectrogramCNNEncoder, aisfx_embedding_net

    rate = 44100
    t = np.arange(int(2.0 * rate)) / rate
    chirp = (0.3 * np.sin(2 * np.pi * (400 + 600 * t) * t)).astype(np.float32)
    audio, _ = lite.encode_batch(lite.preprocess_audio(chirp, rate)[None],
                                 np.zeros((1, *lite.visual_input_shape), np.float32))
    with torch.no_grad():
        alone = SpectrogramCNNEncoder(aisfx_embedding_net()[0].eval())(
            torch.from_numpy(SfxMel(window_seconds=3.0)(chirp, rate)[None])).numpy()
    np.testing.assert_allclose(audio[:, :512], alone, rtol=1e-5, atol=1e-5)
