"""The paper's encoders: AudioMAE ViT-B/16 on a Kaldi fbank and VideoMAE-base on 16 frames
(docs/method.md#the-paper-encoders).

Both are `transformers` models loaded from files the user has (nothing downloads): AudioMAE from its published
timm-style checkpoint through `audiomae_checkpoint_filter`, VideoMAE from a model folder saved by transformers.
"""

from __future__ import annotations

import argparse
import json
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import VideoMAEConfig, VideoMAEModel, ViTConfig, ViTModel
from transformers.utils import logging as transformers_logging

from avcil.errors import InvalidInput
from avcil.data.preprocess import FramePreprocess, KaldiFbank
from avcil.features import FeatureShape
from avcil.model.encoders.profile import PAPER_NORMALIZE, PAPER_SAMPLE_RATE, EncoderProfile, weights_record

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUDIOMAE_WHAT = ("an AudioMAE ViT-B/16 checkpoint (.pth with timm-style keys patch_embed/blocks/norm, e.g. the "
                 "AudioSet-2M pretrained.pth or a finetuned checkpoint from the AudioMAE release)")
VIDEOMAE_WHAT = ("a VideoMAE-base model folder saved by transformers (config.json + model.safetensors or "
                 "pytorch_model.bin, e.g. a local copy of MCG-NJU/videomae-base)")


def audiomae_config(frames: int = 1024, mel_bins: int = 128, hidden: int = 768, layers: int = 12, heads: int = 12,
                    mlp: int = 3072) -> ViTConfig:
    """ViT over a [1, frames, mel_bins] fbank in 16x16 patches, as AudioMAE's encoder (timm ViT: GELU, LN eps 1e-6)."""
    return ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=mlp, hidden_act="gelu", layer_norm_eps=1e-6, image_size=(frames, mel_bins),
                     patch_size=16, num_channels=1, qkv_bias=True, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


class AudioMAEEncoder(nn.Module):
    """fbank [B, 1, frames, mel_bins] -> [B, hidden]: final norm of the mean of the patch tokens (cls excluded)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.vit = ViTModel(config, add_pooling_layer=False)
        # AudioMAE's global pool normalises the pooled vector, not each token: the ViT's own final norm goes.
        self.vit.layernorm = nn.Identity()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(pixel_values=fbank).last_hidden_state
        return self.norm(tokens[:, 1:].mean(dim=1))


def _unwrap_checkpoint(checkpoint: dict) -> dict:
    for key in ("model", "state_dict", "module"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return checkpoint[key]
    return checkpoint


def _strip_prefixes(key: str) -> str:
    while key.startswith(("module.", "model.")):
        key = key.split(".", 1)[1]
    return key


# timm ViT block names -> transformers ViT layer names (the qkv projection is split separately).
_BLOCK_NAMES = {"norm1": "layernorm_before", "attn.proj": "attention.o_proj", "norm2": "layernorm_after",
                "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_TOP_NAMES = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
              "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
              "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias"}
# What an AudioMAE checkpoint holds besides the encoder: the MAE decoder, the mask token, a classifier head.
_IGNORED_PREFIXES = ("decoder", "mask_token", "head.")


def audiomae_checkpoint_filter(checkpoint: dict) -> dict:
    """Map AudioMAE's published (timm-style) keys onto `AudioMAEEncoder`.

    Accepts the raw file content ({'model': state_dict} or a bare state dict), strips 'module.'/'model.' prefixes,
    drops the decoder/mask token/classifier, splits each fused qkv projection, and takes `fc_norm` (the norm a
    finetuned global-pool model applies to the pooled tokens) or else `norm` as the final norm. Raises KeyError on a
    key it does not know.
    """
    state = {_strip_prefixes(k): v for k, v in _unwrap_checkpoint(checkpoint).items()}
    final_norm = "fc_norm" if "fc_norm.weight" in state else "norm"
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        parts = key.split(".")
        if key in _TOP_NAMES:
            mapped[_TOP_NAMES[key]] = value
        elif parts[0] == final_norm and len(parts) == 2:
            mapped[f"norm.{parts[1]}"] = value
        elif parts[0] == "blocks" and len(parts) >= 4:
            layer, name, leaf = parts[1], ".".join(parts[2:-1]), parts[-1]
            prefix = f"vit.layers.{layer}"
            if name == "attn.qkv":
                for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    mapped[f"{prefix}.attention.{proj}.{leaf}"] = chunk
            elif name in _BLOCK_NAMES:
                mapped[f"{prefix}.{_BLOCK_NAMES[name]}.{leaf}"] = value
            else:
                unknown.append(key)
        elif not key.startswith(_IGNORED_PREFIXES) and parts[0] not in ("norm", "fc_norm"):
            unknown.append(key)
    if unknown:
        raise KeyError(f"keys that are not part of an AudioMAE ViT encoder: {unknown[:8]}")
    return mapped


def _require(path: str | Path | None, what: str, description: str) -> Path:
    if path is None:
        raise InvalidInput(f"paper profile: {what}= is required: {description}; or pass random_init=True "
                         f"(random weights, for speed tests only)")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"paper profile: {what} weights not found at {path}; expected {description}")
    return path


# Non-tensor types that published AudioMAE training checkpoints hold besides the weights (their arguments); allowed
# by name, so that weights_only loading reads them and nothing else.
CHECKPOINT_GLOBALS = [argparse.Namespace]


def _load_checkpoint(path: Path, trust: bool = False) -> dict:
    """The checkpoint's content, read with `weights_only` (tensors, containers and CHECKPOINT_GLOBALS); anything else
    in it is refused unless `trust` (the command line's --trust-checkpoint) allows unpickling it in full."""
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            reason = str(error).split("\n")[0][:300]
            raise InvalidInput(f"{path}: holds Python objects besides tensors, refused ({reason}); if you trust this "
                             f"file, pass --trust-checkpoint to unpickle it in full") from None
        warnings.warn(f"{path} holds Python objects besides tensors; unpickling it in full, as "
                      f"--trust-checkpoint asks", stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_audiomae(path: str | Path, config: ViTConfig, trust: bool = False) -> AudioMAEEncoder:
    """AudioMAE encoder with the weights of the checkpoint at `path` (`trust`: see _load_checkpoint)."""
    path = _require(path, "audiomae", AUDIOMAE_WHAT)
    encoder = AudioMAEEncoder(config)
    try:
        state = audiomae_checkpoint_filter(_load_checkpoint(path, trust))
        encoder.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as error:
        raise InvalidInput(f"{path}: not {AUDIOMAE_WHAT} for input {config.image_size}: {error}") from error
    return encoder


class VideoMAEEncoder(nn.Module):
    """frames [B, num_frames, 3, size, size] -> tokens [B, num_frames / tubelet, (size / patch)^2, hidden]."""

    def __init__(self, model: VideoMAEModel):
        super().__init__()
        config = model.config
        self.model = model
        self.groups = config.num_frames // config.tubelet_size
        self.positions = (config.image_size // config.patch_size) ** 2
        self.dim = config.hidden_size

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        tokens = self.model(pixel_values=frames).last_hidden_state
        return tokens.reshape(-1, self.groups, self.positions, self.dim)


def videomae_frames(model_dir: Path | None, config: VideoMAEConfig) -> FramePreprocess:
    """The frame preprocessing a VideoMAE folder asks for (its preprocessor_config.json mean/std), ImageNet's
    mean/std (VideoMAE's training) when it has none."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    processor = model_dir / "preprocessor_config.json" if model_dir else None
    if processor is not None and processor.exists():
        saved = json.loads(processor.read_text())
        mean, std = tuple(saved.get("image_mean", mean)), tuple(saved.get("image_std", std))
    return FramePreprocess(count=config.num_frames, size=config.image_size, mean=mean, std=std)


def load_videomae(model_dir: str | Path) -> tuple[VideoMAEEncoder, Path]:
    """VideoMAE encoder from a transformers model folder, and the weights file it read."""
    model_dir = _require(model_dir, "videomae", VIDEOMAE_WHAT)
    weights = [model_dir / name for name in ("model.safetensors", "pytorch_model.bin") if (model_dir / name).exists()]
    if not (model_dir / "config.json").exists() or not weights:
        raise FileNotFoundError(f"paper profile: {model_dir} is not {VIDEOMAE_WHAT}")
    # A pretraining checkpoint (MCG-NJU/videomae-base is one) also holds the MAE decoder: dropping it is expected,
    # so transformers' report of unused keys is muted; a missing encoder weight is an error.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, info = VideoMAEModel.from_pretrained(model_dir, local_files_only=True, output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise InvalidInput(f"{model_dir}: not {VIDEOMAE_WHAT}: weights missing for {sorted(info['missing_keys'])[:8]}")
    return VideoMAEEncoder(model), weights[0]


def videomae_base_config() -> VideoMAEConfig:
    """VideoMAE-base as pretrained on Kinetics-400: 16 frames of 224², tubelet 2x16x16, final LayerNorm."""
    return VideoMAEConfig(use_mean_pooling=False)


def build_paper_profile(audio: AudioMAEEncoder, visual: VideoMAEEncoder, audio_prep: KaldiFbank,
                        frame_prep: FramePreprocess, weights: dict, name: str = "paper") -> EncoderProfile:
    """Assemble a paper-architecture profile (also used, small, by the tiny test profile)."""
    shape = FeatureShape(audio_dim=audio.norm.normalized_shape[0], time=visual.groups, positions=visual.positions,
                         visual_dim=visual.dim)
    return EncoderProfile(name=name, shape=shape, audio=audio, visual=visual, audio_prep=audio_prep,
                          frame_prep=frame_prep, weights=weights)


def load_paper_profile(audiomae: str | Path | None = None, videomae: str | Path | None = None, *,
                       random_init: bool = False, sample_rate: int = PAPER_SAMPLE_RATE,
                       normalize: bool = PAPER_NORMALIZE, seed: int = 0,
                       trust_checkpoint: bool = False) -> EncoderProfile:
    """AudioMAE ViT-B/16 + VideoMAE-base. `audiomae`: the checkpoint file; `videomae`: the model folder;
    `trust_checkpoint`: unpickle an AudioMAE checkpoint that holds more than tensors in full.

    `random_init=True` builds both with random weights (seeded), for speed tests; features are then meaningless.
    `sample_rate`/`normalize`: the fbank settings (defaults: the paper's extraction, 11,430 Hz, no normalisation).
    """
    audio_prep = KaldiFbank(sample_rate=sample_rate, normalize=normalize)
    audio_config = audiomae_config(frames=audio_prep.target_frames, mel_bins=audio_prep.num_mel_bins)
    if random_init:
        torch.manual_seed(seed)
        video_config = videomae_base_config()
        return build_paper_profile(AudioMAEEncoder(audio_config), VideoMAEEncoder(VideoMAEModel(video_config)),
                                   audio_prep, videomae_frames(None, video_config),
                                   {"random_init": True, "seed": seed})
    _require(audiomae, "audiomae", AUDIOMAE_WHAT)
    _require(videomae, "videomae", VIDEOMAE_WHAT)
    audio = load_audiomae(audiomae, audio_config, trust_checkpoint)
    visual, videomae_file = load_videomae(videomae)
    weights = {"audiomae": weights_record(audiomae), "videomae": weights_record(videomae_file)}
    return build_paper_profile(audio, visual, audio_prep, videomae_frames(Path(videomae), visual.model.config),
                               weights)
