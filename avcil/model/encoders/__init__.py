"""Frozen encoder profiles: `load_profile('lite' | 'paper' | 'tiny', ...)` -> EncoderProfile.

- lite: pretrained EfficientNet-Lite0 frames + aiSFX audio, weights from installed registry packages; the
  embedded default (real time on a CPU). Features: audio 512, visual 8 x 49 x 1280.
- paper: AudioMAE ViT-B/16 + VideoMAE-base from local files (`audiomae=` checkpoint .pth, `videomae=` model
  folder), or `random_init=True` for speed tests. Features: audio 768, visual 8 x 196 x 768.
- tiny: random toy versions of the paper's architectures, seeded, for tests.
"""

from __future__ import annotations

from avcil.model.encoders.profile import EncoderProfile

PROFILES = ("lite", "paper", "tiny")


def load_profile(name: str, **options) -> EncoderProfile:
    """Build a profile by name; `options` go to its loader (`load_lite_profile`, `load_paper_profile`,
    `load_tiny_profile`), e.g. load_profile('paper', audiomae='pretrained.pth', videomae='videomae-base/')."""
    # Imported here so that a profile's own dependencies (transformers, the weights packages) load only when used.
    if name == "lite":
        from avcil.model.encoders.lite import load_lite_profile
        return load_lite_profile(**options)
    if name == "paper":
        from avcil.model.encoders.paper import load_paper_profile
        return load_paper_profile(**options)
    if name == "tiny":
        from avcil.model.encoders.tiny import load_tiny_profile
        return load_tiny_profile(**options)
    raise ValueError(f"unknown encoder profile {name!r}; expected one of {PROFILES}")


__all__ = ["EncoderProfile", "PROFILES", "load_profile"]
