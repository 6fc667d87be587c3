"""Frozen encoder profiles: `load_profile('lite' | 'paper' | 'tiny', ...)` -> EncoderProfile.

- lite: pretrained EfficientNet-Lite0 frames + aiSFX and speech-embedding audio, weights from installed registry
  packages; the embedded default (real time on a CPU). Features (profile version 2): audio 704 (aiSFX 512, speech
  mean 96, speech max 96), visual 8 x 49 x 320.
- paper: AudioMAE ViT-B/16 + VideoMAE-base from local files (`audiomae=` checkpoint .pth, `videomae=` model
  folder), or `random_init=True` for speed tests. Features: audio 768, visual 8 x 196 x 768.
- tiny: random toy versions of the paper's architectures, seeded, for tests.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Callable

from avcil.errors import InvalidInput
from avcil.data.store import profile_label
from avcil.model.encoders.profile import (  # noqa: F401 (PAPER_*: the paper defaults, named by the CLI)
    PAPER_NORMALIZE, PAPER_SAMPLE_RATE, PROFILE_VERSIONS, EncoderProfile, ProfileMismatch, recorded_version)

@dataclass(frozen=True)
class ProfileSpec:
    """How a profile is built: its loader (`module`.`loader`, imported when used, so that a profile's own dependencies
    load only with it), the loader's options that rebuild a recorded profile from the settings it describes, the
    options naming local weight files (not recorded: given again where a recorded profile is rebuilt), and the
    options that build it without weight files (for speed tests)."""
    module: str
    loader: str
    recorded_options: Callable[[dict, dict, dict], dict]  # (audio settings, visual settings, weights) -> options
    weight_files: tuple[str, ...] = ()
    without_weights: dict = field(default_factory=dict)

    def load(self, **options) -> EncoderProfile:
        return getattr(importlib.import_module(self.module), self.loader)(**options)


def _paper_options(audio: dict, visual: dict, weights: dict) -> dict:
    options = {"sample_rate": audio["sample_rate"], "normalize": audio["normalize"]}
    if weights.get("random_init"):
        options.update(random_init=True, seed=weights.get("seed", 0))
    return options


# Every profile, by name: the one list (the command line's choices) and how each is built and rebuilt.
PROFILE_SPECS = {
    "lite": ProfileSpec("avcil.model.encoders.lite", "load_lite_profile",
                        lambda audio, visual, weights: {"audio_window_seconds": audio["window_seconds"],
                                                        "frame_count": visual["count"], "frame_size": visual["size"]}),
    "paper": ProfileSpec("avcil.model.encoders.paper", "load_paper_profile", _paper_options,
                         weight_files=("audiomae", "videomae"), without_weights={"random_init": True}),
    "tiny": ProfileSpec("avcil.model.encoders.tiny", "load_tiny_profile",
                        lambda audio, visual, weights: {"seed": weights["seed"]} if "seed" in weights else {}),
}
PROFILES = tuple(PROFILE_SPECS)


def profile_spec(name: str) -> ProfileSpec:
    spec = PROFILE_SPECS.get(name)
    if spec is None:
        raise InvalidInput(f"unknown encoder profile {name!r}; expected one of {PROFILES}")
    return spec


def load_profile(name: str, **options) -> EncoderProfile:
    """Build a profile by name; `options` go to its loader (`load_lite_profile`, `load_paper_profile`,
    `load_tiny_profile`), e.g. load_profile('paper', audiomae='pretrained.pth', videomae='videomae-base/')."""
    return profile_spec(name).load(**options)


def load_profile_without_weights(name: str) -> EncoderProfile:
    """A profile as built for speed tests: the paper's with random weights (its weights are local files), the
    others as usual."""
    return load_profile(name, **profile_spec(name).without_weights)


__all__ = ["EncoderProfile", "PROFILES", "PROFILE_SPECS", "PROFILE_VERSIONS", "ProfileMismatch", "load_profile",
           "load_profile_without_weights", "check_version", "profile_label"]


def audio_parts(record: dict | None, audio_dim: int) -> tuple[int, ...] | None:
    """The widths of the separately pooled parts of the audio vector that the profile a manifest or feature store
    records (`EncoderProfile.describe()`) produces (`HeadConfig.audio_parts`): the lite encoder's [aiSFX | speech
    embedding mean | max] (lite.SoundAndSpeechEncoder.combine); None where it is one part or nothing is recorded."""
    if not record or record.get("settings", {}).get("audio", {}).get("kind") != "sfx_speech":
        return None
    from avcil.model.encoders.speech import EMBEDDING_DIM

    return (audio_dim - 2 * EMBEDDING_DIM, EMBEDDING_DIM, EMBEDDING_DIM)


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
    spec = profile_spec(name)
    options = spec.recorded_options(settings["audio"], settings["visual"], settings["weights"])
    profile = spec.load(**options, **{k: v for k, v in weights.items() if k in spec.weight_files})
    rebuilt = json.loads(json.dumps(profile.describe()))
    differing = sorted(k for k in ("shape", "settings") if rebuilt[k] != json.loads(json.dumps(record[k])))
    if differing:
        raise ProfileMismatch(f"the {name} encoders built here differ from the ones {where} was made with (in "
                              f"{', '.join(differing)}): recorded {profile_label(record)} with weights "
                              f"{record['settings']['weights']}, built {profile_label(rebuilt)} with weights "
                              f"{rebuilt['settings']['weights']}")
    return profile
