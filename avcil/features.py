"""The shapes every stage agrees on: what an encoder profile produces per clip."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from avcil.errors import InvalidInput


@dataclass(frozen=True)
class FeatureShape:
    """Per-clip feature dimensions: audio [audio_dim], visual [time, positions, visual_dim]."""

    audio_dim: int
    time: int
    positions: int
    visual_dim: int

    @property
    def visual(self) -> tuple[int, int, int]:
        return (self.time, self.positions, self.visual_dim)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureShape":
        return cls(**{k: int(d[k]) for k in ("audio_dim", "time", "positions", "visual_dim")})

    def check(self, audio: np.ndarray, visual: np.ndarray, where: str) -> None:
        """Raise a clear error when one clip's features do not have this shape."""
        if tuple(audio.shape) != (self.audio_dim,) or tuple(visual.shape) != self.visual:
            raise InvalidInput(
                f"{where}: features of shape audio {tuple(audio.shape)}, visual {tuple(visual.shape)}; "
                f"expected audio ({self.audio_dim},), visual {self.visual}"
            )


@dataclass
class Features:
    """One clip as the frozen encoders see it."""

    audio: np.ndarray  # [audio_dim]
    visual: np.ndarray  # [time, positions, visual_dim]
