"""The precision of a training forward pass: a module of its own, so that the device commands' flags can name the
choices without importing the learner."""

from __future__ import annotations

import torch

from avcil.errors import InvalidInput

PRECISIONS = ("fp32", "bf16", "auto")


def compute_dtype(precision: str, device: str = "cpu") -> torch.dtype:
    """The dtype the head's forward runs in. `bf16` autocasts the matrix products to bfloat16 (the loss terms stay
    float32); `auto` picks bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX, where it about halves a field update) and fp32 elsewhere (emulated bf16 is slower)."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"unknown training precision {precision!r}; expected one of {list(PRECISIONS)}")
    if precision == "auto":
        if device.startswith("cuda"):
            native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        else:
            checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu helpers
            native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
        precision = "bf16" if native else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32
