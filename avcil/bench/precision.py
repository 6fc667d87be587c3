"""The precisions the GPU benchmarks run in, as one autocast context: fp32 runs as written (no autocast), bf16 and
fp16 run under torch.autocast on the device's type, so that the weights stay fp32 and only the matmuls and
convolutions drop to 16 bits (what mixed-precision training and inference do)."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """A context that runs its block in `precision` ('fp32', 'bf16' or 'fp16') on `device` ('cpu', 'cuda[:N]')."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {list(PRECISIONS)}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=PRECISIONS[precision])
