"""Latency of one frozen encoder on one device, by the way it is run:

- `eager`: the module as written, in fp32 or under bf16/fp16 autocast (transformers' SDPA attention), inputs and
  outputs on the device: the encoders' own speed.
- `backend`, `backend-graph`: the torch backend's CUDA options, fp16 weights without and with a CUDA graph for
  the batch (avcil/backends.py, `model_backends(..., fp16=True, graph_batch=N)`): numpy in, numpy out as its
  callers see it, so the copies to and from the GPU are in the time.
- `compile`: torch.compile'd under fp16 autocast; its compile time is recorded apart.

Every call is followed by a device synchronisation, so a time is the whole call, not its launch.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from avcil.bench.latency import summarise
from avcil.bench.precision import autocast

PATHS = ("eager", "backend", "backend-graph", "compile")
CUDA_ONLY = ("backend", "backend-graph", "compile")  # fp16 weights and graphs are refused on a CPU by the backend


def time_call(call: Callable[[], object], warmup: int, iterations: int, cuda: bool) -> list[float]:
    """Seconds of each of `iterations` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    if cuda:
        torch.cuda.synchronize()
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def _eager(module: nn.Module, inputs: torch.Tensor, device: str, precision: str) -> Callable[[], object]:
    def call():
        with torch.inference_mode(), autocast(device, precision):
            return module(inputs)
    return call


def _backend(module: nn.Module, inputs: torch.Tensor, device: str, graph: bool) -> Callable[[], object]:
    from avcil.backends import load_backend

    # The backend casts its module to fp16 in place: a copy keeps the profile's fp32 encoder for the other rows.
    backend = load_backend(copy.deepcopy(module), "torch", device, input_names=["inputs"], output_names=["outputs"],
                           input_shapes=[tuple(inputs.shape[1:])], fp16=True,
                           graph_batch=inputs.shape[0] if graph else None)
    host = inputs.cpu().numpy()
    return lambda: backend(host)


def measure(module: nn.Module, input_shape: tuple[int, ...], batch: int, path: str, precision: str, device: str,
            warmup: int, iterations: int) -> dict:
    """One row's numbers: p50/p95 (ms) of a call on `batch` random inputs, clips/s at the median, the device's peak
    allocation (CUDA) and, for `compile`, the seconds the first calls took to compile."""
    cuda = device.startswith("cuda")
    inputs = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32))
    inputs = inputs.to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    extra = {}
    if path == "eager":
        call = _eager(module, inputs, device, precision)
    elif path in ("backend", "backend-graph"):
        call = _backend(module, inputs, device, graph=path == "backend-graph")
    elif path == "compile":
        call = _eager(torch.compile(module), inputs, device, precision)
        start = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        extra["compile_s"] = time.perf_counter() - start
    else:
        raise ValueError(f"path {path!r}: expected one of {PATHS}")
    timing = summarise(time_call(call, warmup, iterations, cuda))
    row = {"p50_ms": timing["p50_ms"], "p95_ms": timing["p95_ms"], "iterations": timing["iterations"],
           "clips_per_s": batch / (timing["p50_ms"] / 1e3), **extra}
    if cuda:
        row["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row
