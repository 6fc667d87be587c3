"""Frozen encoder profiles: `load_profile('lite' | 'paper' | 'tiny', ...)` -> EncoderProfile.

- lite: pretrained EfficientNet-Lite0 frames + aiSFX and speech-embedding audio, weights from installed registry
  packages; the embedded default (real time on a CPU). Features (profile version 2): audio 704 (aiSFX 512, speech
  mean 96, speech max 96), visual 8 x 49 x 320.
- paper: AudioMAE ViT-B/16 + VideoMAE-base from local files (`audiomae=` checkpoint .pth, `videomae=` model
  folder), or `random_init=True` for speed tests. Features: audio 768, visual 8 x 196 x 768.
- tiny: random toy versions of the paper's architectures, seeded, for tests.
"""

from __future__ import annotations

import json

from avcil.errors import InvalidInput
from avcil.data.store import profile_label
from avcil.model.encoders.profile import (  # noqa: F401 (PAPER_*: the paper defaults, named by the CLI)
    PAPER_NORMALIZE, PAPER_SAMPLE_RATE, PROFILE_VERSIONS, EncoderProfile, ProfileMismatch, recorded_version)

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
    raise InvalidInput(f"unknown encoder profile {name!r}; expected one of {PROFILES}")


__all__ = ["EncoderProfile", "PROFILES", "PROFILE_VERSIONS", "ProfileMismatch", "load_profile", "check_version",
           "profile_label"]


def check_version(record: dict, where: str, rebuild: str) -> None:
    """Refuse, in one line naming both and the fix (`rebuild`), a record of another version than this avcil's."""
    name, version = record.get("name"), recorded_version(record)
    current = PROFILE_VERSIONS.get(name)
    if current is not None and version != current:
        raise ProfileMismatch(f"{where} was made with the {profile_label(record)} encoders; this avcil's are "
                              f"{name} v{current}, whose features do not mix with them: {rebuild}")


def profile_from_record(record: dict | None, where: str = "the model", **weights):
    """Rebuild the encoder profile a manifest or feature store describes (`EncoderProfile.describe()`), and check
    that it produces the recorded settings. `weights`: the paper profile's `audiomae=`/`videomae=` files."""
    if not record:
        raise InvalidInput("the model records no encoder profile (trained on features from elsewhere); name one")
    check_version(record, where, "retrain the model on features of this version (`avcil train --data av-digits` "
                                 "re-extracts them; a store of your own: `avcil extract` into a new folder)")
    name, settings = record["name"], record["settings"]
    audio, visual, recorded_weights = settings["audio"], settings["visual"], settings["weights"]
    if name == "paper":
        options = {"sample_rate": audio["sample_rate"], "normalize": audio["normalize"]}
        if recorded_weights.get("random_init"):
            options.update(random_init=True, seed=recorded_weights.get("seed", 0))
        profile = load_profile(name, **options, **weights)
    elif name == "lite":
        profile = load_profile(name, audio_window_seconds=audio["window_seconds"], frame_count=visual["count"],
                               frame_size=visual["size"])
    else:
        profile = load_profile(name, **({"seed": recorded_weights["seed"]} if "seed" in recorded_weights else {}))
    rebuilt = json.loads(json.dumps(profile.describe()))
    differing = sorted(k for k in ("shape", "settings") if rebuilt[k] != json.loads(json.dumps(record[k])))
    if differing:
        raise ProfileMismatch(f"the {name} encoders built here differ from the ones {where} was made with (in "
                              f"{', '.join(differing)}): recorded {profile_label(record)} with weights "
                              f"{record['settings']['weights']}, built {profile_label(rebuilt)} with weights "
                              f"{rebuilt['settings']['weights']}")
    return profile
