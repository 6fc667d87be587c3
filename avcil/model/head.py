"""The model over the encoders' features: (the AV-CIL fusion part | none) -> what decides.

The fusion part (docs/method.md#the-av-cil-fusion-head): audio-guided spatial and temporal attention, pre-fusion
projections, additive fusion and a linear classifier that grows by appending rows. What decides is that classifier,
or a closed-form readout (avcil/model/readout.py) over the encoders' pooled features, the fused feature or both.

A model has the fusion part only where it uses it (`HeadConfig.fusion`): a gradient method trains it, and a readout
reading `fused` or `both` reads it. The default analytic method reads the encoders' pooled features alone and trains
nothing by gradient, so its model is the readout and nothing else: no untrained weights stored in every version,
nothing computed for nothing on every decision.

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
from avcil.model.readout import build_readout, input_dim, modality_columns, readout_inputs, readout_parts

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
    # Whether the model has the fusion part (attention, projections, linear classifier). Without it the readout,
    # which must then read the encoders' pooled features, is the whole model (see the module's docstring).
    fusion: bool = True
    # The widths of the separately pooled parts of the audio vector, in order (the lite encoder's: aiSFX | speech
    # mean | speech max), so that the analytic readout weighs every pooled part alike (`readout_parts`); None (a
    # model made before it was recorded, or an audio encoder of one part): each input column alike.
    audio_parts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidInput(f"unknown modality {self.modality!r}; expected one of {MODALITIES}")
        if self.audio_parts is not None:
            object.__setattr__(self, "audio_parts", tuple(self.audio_parts))  # a list where read back from JSON
            if (not all(isinstance(w, int) and w >= 1 for w in self.audio_parts)
                    or sum(self.audio_parts) != self.audio_dim):
                raise InvalidInput(f"audio parts {list(self.audio_parts)} are not positive widths that add up to "
                                   f"the audio width {self.audio_dim}")
        if not self.fusion and decides_by_fusion(self.readout):
            raise InvalidInput("a model without the fusion part decides by a readout of the encoders' pooled "
                               f"features; got readout {self.readout!r}")

    @classmethod
    def for_shape(cls, shape: FeatureShape, fusion_dim: int | None = None, modality: str = "audio-visual",
                  audio_parts: tuple[int, ...] | None = None) -> "HeadConfig":
        # The paper's fusion width equals the visual width (768); keep that unless told otherwise.
        return cls(shape.audio_dim, shape.visual_dim, fusion_dim or shape.visual_dim, modality,
                   audio_parts=audio_parts)

    @property
    def uses_audio(self) -> bool:
        return self.modality in ("audio-visual", "audio")

    @property
    def uses_visual(self) -> bool:
        return self.modality in ("audio-visual", "visual")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HeadOutput:
    logits: torch.Tensor | None  # [B, classes]: what decides (the readout's scores where the head has one)
    # h = ha + hv (or the single branch) [B, D]: the feature NME classifiers use; None without the fusion part.
    fused: torch.Tensor | None
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
    """The model over the encoders' features: the fusion part and its linear classifier where `config.fusion`,
    and the readout where `config.readout`; at least one of them decides."""

    def __init__(self, config: HeadConfig, num_classes: int = 0):
        super().__init__()
        self.config = config
        c = config
        self.audio_proj = self.visual_proj = self.classifier = None
        if c.fusion:
            self.audio_proj = nn.Linear(c.audio_dim, c.fusion_dim) if c.uses_audio else None  # Wa
            self.visual_proj = nn.Linear(c.visual_dim, c.fusion_dim) if c.uses_visual else None  # Wv
            if c.modality == "audio-visual":
                self.audio_query = nn.Linear(c.audio_dim, c.visual_dim)  # Pa
                self.visual_key = nn.Linear(c.visual_dim, c.visual_dim)  # Pv
            self.classifier = _linear(c.fusion_dim, num_classes)  # Wc
        self.readout = self._build_readout(c.readout, num_classes) if c.readout else None

    @property
    def has_fusion(self) -> bool:
        """Whether the model has the fusion part: what a gradient update trains and a fused readout reads."""
        return self.config.fusion

    def require_fusion(self, need: str) -> None:
        """Refuse `need` (what the caller is about to do) on a model without the fusion part."""
        if not self.has_fusion:
            raise InvalidInput(f"{need} needs the fusion part, which this model does not have (its readout reads "
                               f"the encoders' features alone)")

    def _build_readout(self, spec: dict, num_classes: int) -> nn.Module:
        c = self.config
        audio_dim = c.audio_dim if c.uses_audio else None
        visual_dim = c.visual_dim if c.uses_visual else None
        return build_readout(spec, input_dim(spec["features"], audio_dim, visual_dim, c.fusion_dim), num_classes,
                             modality_columns(spec, audio_dim, visual_dim),
                             readout_parts(spec["features"], c.audio_parts if audio_dim else (), visual_dim,
                                           c.fusion_dim) if c.audio_parts is not None else None)

    def set_readout(self, spec: dict | None) -> None:
        """Install a new, empty readout of these settings (or remove it: None); fit it with `readout.accumulate`
        and `readout.solve`. A model without the fusion part takes only a readout of the pooled features."""
        classes = self.num_classes
        self.config = replace(self.config, readout=spec)  # checks that something is left to decide
        self.readout = self._build_readout(spec, classes) if spec else None

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features if self.classifier is not None else self.readout.num_classes

    def add_classes(self, count: int) -> None:
        """Append `count` classifier rows; the rows of the classes seen so far are kept as they are."""
        if self.classifier is not None:
            self.classifier = _grown(self.classifier, count)
        if self.readout is not None:
            self.readout.add_classes(count)

    def readout_inputs(self, audio: torch.Tensor, visual: torch.Tensor,
                       fused: torch.Tensor | None = None) -> torch.Tensor:
        """What the readout reads for these clips (its `features` setting). The fusion part (`features`) runs only
        for a readout that reads its output and only when `fused` is not given: the default readout reads the
        encoders' pooled features alone, and its model has no fusion part at all."""
        c = self.config
        kind = c.readout["features"]
        if fused is None and kind != "pooled":
            fused = self.features(audio, visual).fused
        return readout_inputs(kind, audio if c.uses_audio else None, visual if c.uses_visual else None, fused)

    def features(self, audio: torch.Tensor, visual: torch.Tensor) -> HeadOutput:
        """The fusion part alone: the fused feature, the embeddings and the attention maps, no classifier or
        readout (`logits` is None). What herding ranks exemplars by and NME classifies."""
        self.require_fusion("the fused feature (herding, a readout of the fused feature, gradient training)")
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
        logits kept beside them for gradient training), else the linear classifier's. Without the fusion part only
        the readout runs, and the other fields are None."""
        if not self.has_fusion:
            return HeadOutput(logits=self.readout(self.readout_inputs(audio, visual)), fused=None, audio_embed=None,
                              visual_embed=None, spatial_attn=None, temporal_attn=None)
        out = self.features(audio, visual)
        out.logits = self.classifier(out.fused)
        if self.readout is not None:
            out.classifier_logits = out.logits
            out.logits = self.readout(self.readout_inputs(audio, visual, out.fused))
        return out


def load_head(record: dict, state: dict, num_classes: int, trained_by_gradient: bool,
              stored_apart=None) -> FusionHead:
    """A head from its recorded config and state dict. A record from before `HeadConfig.fusion` existed has no such
    key, and its state holds the fusion part's weights whether the model used them or not: it keeps them where it
    did (`trained_by_gradient`, which the caller reads from its own records, or a readout that reads them); else
    they were never trained nor read, and are dropped, which changes no decision. `stored_apart(head)`: the state
    the caller keeps elsewhere for this head (a model dir's statistics files), added before it loads."""
    if "fusion" in record:
        config = HeadConfig(**record)
    else:
        config = HeadConfig(**record, fusion=trained_by_gradient or decides_by_fusion(record.get("readout")))
        if not config.fusion:
            state = {name: value for name, value in state.items() if name.startswith("readout.")}
    head = FusionHead(config, num_classes)
    head.load_state_dict({**state, **(stored_apart(head) if stored_apart is not None else {})})
    return head


def decides_by_fusion(readout: dict | None) -> bool:
    """Whether a model with this readout (None: no readout) needs the fusion part to decide: the linear classifier
    decides, or the readout reads the fused feature."""
    return not (isinstance(readout, dict) and readout.get("features") == "pooled")


def _grown(classifier: nn.Linear, count: int) -> nn.Linear:
    """The classifier with `count` new rows; the rows of the classes seen so far kept as they are."""
    grown = _linear(classifier.in_features, classifier.out_features + count).to(classifier.weight.device,
                                                                                classifier.weight.dtype)
    with torch.no_grad():
        grown.weight[: classifier.out_features] = classifier.weight
        grown.bias[: classifier.out_features] = classifier.bias
    return grown


def _linear(inputs: int, outputs: int) -> nn.Linear:
    with warnings.catch_warnings():
        # A head starts with no classes; torch warns that initialising an empty weight does nothing.
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(inputs, outputs)
