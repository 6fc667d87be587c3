"""A tiny random profile for tests: the paper's architectures and preprocessing at toy sizes, seeded.

Features: audio 24-d; visual 2 time groups x 4 positions x 32-d (4 frames of 32², tubelet 2, patches 16²).
Audio: a 16 kHz, 32-bin fbank over 128 frames (1.28 s). Audio and visual widths differ on purpose, so that code
which mixes them up fails here.
"""

from __future__ import annotations

import torch
from transformers import VideoMAEConfig, VideoMAEModel

from avcil.data.preprocess import FramePreprocess, KaldiFbank
from avcil.model.encoders.paper import (IMAGENET_MEAN, IMAGENET_STD, AudioMAEEncoder, VideoMAEEncoder,
                                        audiomae_config, build_paper_profile)
from avcil.model.encoders.profile import EncoderProfile


def tiny_video_config() -> VideoMAEConfig:
    return VideoMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=16, num_frames=4, tubelet_size=2, use_mean_pooling=False)


def load_tiny_profile(seed: int = 0) -> EncoderProfile:
    audio_prep = KaldiFbank(sample_rate=16000, normalize=True, num_mel_bins=32, target_frames=128)
    torch.manual_seed(seed)
    audio = AudioMAEEncoder(audiomae_config(frames=audio_prep.target_frames, mel_bins=audio_prep.num_mel_bins,
                                            hidden=24, layers=2, heads=2, mlp=48))
    video_config = tiny_video_config()
    visual = VideoMAEEncoder(VideoMAEModel(video_config))
    frame_prep = FramePreprocess(count=video_config.num_frames, size=video_config.image_size, mean=IMAGENET_MEAN,
                                 std=IMAGENET_STD)
    return build_paper_profile(audio, visual, audio_prep, frame_prep, {"random_init": True, "seed": seed},
                               name="tiny")
