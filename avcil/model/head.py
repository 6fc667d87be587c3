"""The AV-CIL fusion head (docs/method.md#the-av-cil-fusion-head): audio-guided spatial and temporal attention,
pre-fusion projections, additive fusion and a classifier that grows by appending rows.

One class covers the three modalities; `modality` decides which branches exist, so the losses and the
learner see the same `HeadOutput` whatever the variant (fields a variant cannot produce are None).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from avcil.errors import InvalidInput
from avcil.features import FeatureShape
from avcil.model.readout import build_readout, input_dim, modality_columns, readout_inputs

MODALITIES = ("audio-visual", "audio", "visual")


@dataclass(frozen=True)
class HeadConfig:
    audio_dim: int
    visual_dim: int
    fusion_dim: int
    modality: str = "audio-visual"
    # A closed-form classifier that decides in place of the linear one (avcil/model/readout.py readout_spec), or
    # None: the linear classifier decides.
    readout: dict | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidInput(f"unknown modality {self.modality!r}; expected one of {MODALITIES}")

    @classmethod
    def for_shape(cls, shape: FeatureShape, fusion_dim: int | None = None, modality: str = "audio-visual") -> "HeadConfig":
        # The paper's fusion width equals the visual width (768); keep that unless told otherwise.
        return cls(shape.audio_dim, shape.visual_dim, fusion_dim or shape.visual_dim, modality)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadOutput:
    logits: torch.Tensor | None  # [B, classes]: what decides (the readout's scores where the head has one)
    fused: torch.Tensor  # h = ha + hv (or the single branch) [B, D]: the feature NME classifiers use
    audio_embed: torch.Tensor | None  # normalize(ha) [B, D]
    visual_embed: torch.Tensor | None  # normalize(hv) [B, D]
    spatial_attn: torch.Tensor | None  # alpha [B, T, S, Dv], a distribution over S for every (t, d)
    temporal_attn: torch.Tensor | None  # beta [B, T, Dv], a distribution over T for every d
    # The linear classifier's logits where a readout decides (None: they are `logits`). Gradient training and its
    # loss terms always use the linear classifier's (`train_logits`).
    classifier_logits: torch.Tensor | None = None

    @property
    def train_logits(self) -> torch.Tensor:
        return self.logits if self.classifier_logits is None else self.classifier_logits

    def for_losses(self) -> "HeadOutput":
        """After a reduced-precision forward: logits and embeddings in float32 for the loss terms. The attention
        maps stay as computed: they are the largest tensors by far (alpha is B x 8 x 49 x 320 for lite), a float32
        copy of them costs a fifth of a training step, and their KL compares like with like."""
        maps = {"spatial_attn", "temporal_attn"}
        return HeadOutput(**{name: value if value is None or name in maps else value.float()
                             for name, value in vars(self).items()})


def audio_guided_attention(audio_query: torch.Tensor, keys: torch.Tensor, visual: torch.Tensor):
    """Channel-wise attention (docs/method.md#audio-guided-attention).

    audio_query qa [B, Dv], keys K = tanh(Pv V) [B, T, S, Dv], visual V [B, T, S, Dv].
    Returns the pooled visual vector [B, Dv], alpha [B, T, S, Dv] and beta [B, T, Dv].
    """
    q = audio_query[:, None, None, :]
    spatial = torch.softmax(keys * q, dim=2)
    attended_keys = (spatial * keys).sum(dim=2)  # u [B, T, Dv]
    temporal = torch.softmax(attended_keys * audio_query[:, None, :], dim=1)
    pooled = (temporal * (spatial * visual).sum(dim=2)).sum(dim=1)
    return pooled, spatial, temporal


class FusionHead(nn.Module):
    def __init__(self, config: HeadConfig, num_classes: int = 0):
        super().__init__()
        self.config = config
        c = config
        uses_audio = c.modality in ("audio-visual", "audio")
        uses_visual = c.modality in ("audio-visual", "visual")
        self.audio_proj = nn.Linear(c.audio_dim, c.fusion_dim) if uses_audio else None  # Wa
        self.visual_proj = nn.Linear(c.visual_dim, c.fusion_dim) if uses_visual else None  # Wv
        if c.modality == "audio-visual":
            self.audio_query = nn.Linear(c.audio_dim, c.visual_dim)  # Pa
            self.visual_key = nn.Linear(c.visual_dim, c.visual_dim)  # Pv
        self.classifier = _linear(c.fusion_dim, num_classes)  # Wc
        self.readout = self._build_readout(c.readout, num_classes) if c.readout else None

    def _build_readout(self, spec: dict, num_classes: int) -> nn.Module:
        c = self.config
        audio_dim = c.audio_dim if self.audio_proj is not None else None
        visual_dim = c.visual_dim if self.visual_proj is not None else None
        return build_readout(spec, input_dim(spec["features"], audio_dim, visual_dim, c.fusion_dim), num_classes,
                             modality_columns(spec, audio_dim, visual_dim))

    def set_readout(self, spec: dict | None) -> None:
        """Install a new, empty readout of these settings (or remove it: None); fit it with `readout.accumulate`
        and `readout.solve`."""
        self.config = replace(self.config, readout=spec)
        self.readout = self._build_readout(spec, self.num_classes) if spec else None

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def add_classes(self, count: int) -> None:
        """Append `count` classifier rows; the rows of the classes seen so far are kept as they are."""
        old = self.classifier
        grown = _linear(old.in_features, old.out_features + count).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            grown.weight[: old.out_features] = old.weight
            grown.bias[: old.out_features] = old.bias
        self.classifier = grown
        if self.readout is not None:
            self.readout.add_classes(count)

    def readout_inputs(self, audio: torch.Tensor, visual: torch.Tensor,
                       fused: torch.Tensor | None = None) -> torch.Tensor:
        """What the readout reads for these clips (its `features` setting). The fusion part (`features`) runs only
        for a readout that reads its output and only when `fused` is not given: the default readout reads the
        encoders' pooled features, and the attention and projections of a head never trained by gradient would be
        computed for nothing on every decision and field update."""
        kind = self.config.readout["features"]
        if fused is None and kind != "pooled":
            fused = self.features(audio, visual).fused
        uses_audio, uses_visual = self.audio_proj is not None, self.visual_proj is not None
        return readout_inputs(kind, audio if uses_audio else None, visual if uses_visual else None, fused)

    def features(self, audio: torch.Tensor, visual: torch.Tensor) -> HeadOutput:
        """The fusion part alone: the fused feature, the embeddings and the attention maps, no classifier or
        readout (`logits` is None). What herding ranks exemplars by and NME classifies."""
        modality = self.config.modality
        spatial = temporal = audio_hidden = visual_hidden = None
        if modality == "audio-visual":
            query = torch.tanh(self.audio_query(audio))
            keys = torch.tanh(self.visual_key(visual))
            pooled, spatial, temporal = audio_guided_attention(query, keys, visual)
        elif modality == "visual":
            pooled = visual.mean(dim=(1, 2))
        if self.audio_proj is not None:
            audio_hidden = F.relu(self.audio_proj(audio))
        if self.visual_proj is not None:
            visual_hidden = F.relu(self.visual_proj(pooled))
        return HeadOutput(
            logits=None,
            fused=sum(h for h in (audio_hidden, visual_hidden) if h is not None),
            audio_embed=F.normalize(audio_hidden, dim=-1) if audio_hidden is not None else None,
            visual_embed=F.normalize(visual_hidden, dim=-1) if visual_hidden is not None else None,
            spatial_attn=spatial,
            temporal_attn=temporal,
        )

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> HeadOutput:
        """The features, then what decides: the readout's scores where the head has one (the linear classifier's
        logits kept beside them for gradient training), else the linear classifier's."""
        out = self.features(audio, visual)
        out.logits = self.classifier(out.fused)
        if self.readout is not None:
            out.classifier_logits = out.logits
            out.logits = self.readout(self.readout_inputs(audio, visual, out.fused))
        return out


def _linear(inputs: int, outputs: int) -> nn.Linear:
    with warnings.catch_warnings():
        # A head starts with no classes; torch warns that initialising an empty weight does nothing.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(inputs, outputs)
