"""Thread discipline of the recognizer on a device that shares its cores with other work.

`RuntimeThreads` holds the thread counts the recognizer runs with, applies them to this process before any
encoder runs, and is recorded in every decision's JSON (`"threads": {...}`), so a latency can always be read
against the settings that produced it:
- torch intra-op threads: a fixed small count (default: 1 for torch, 2 for onnxruntime; DEFAULT_INTRA_OP), never "all cores" of a bigger
  machine, where each call would wait at a barrier for threads other processes' work delays;
- torch inter-op threads: 1 (the encoders are one chain of ops; a second pool only competes with the first);
- onnxruntime: the same intra-op count, one inter-op thread, spinning off (avcil.backends.session_options); on a
  device that runs nothing else, `avcil run --spin` keeps the threads of the graph that runs alone after a window's
  end spinning (SPINNING_GRAPHS);
- torch's OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, set when avcil is imported);
- numpy's BLAS: 1 thread. OpenBLAS threads spin for a while after each call; right after the preprocessing's mel
  matmul they took the cores the encoders need, which doubled the lite audio encoder's time (30 -> 60 ms on two
  cores). The runtime's own numpy work is small.

The field learner runs in its own process (`avcil learn`, or the one `avcil serve` starts for a class learnt from
the page) at lower priority (`--nice`, default 10) with its torch threads capped (`--threads`, default 1), so that it
takes at most one core from the recognizer.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

# Intra-op threads per backend, measured on 2 cores with 1 and 2 CPU-bound competitors (avcil bench load, lite,
# benchmarks/results/load-lite-cpu-threads*.md): torch's p95 was 144 / 305 / 497 ms with 2 threads and 166 / 168 /
# 289 ms with 1 (quiet / 1 / 2 competitors), so torch takes 1; onnxruntime's was 73 / 110 / 150 ms with 2 and
# 124 / 114 / 176 ms with 1, so it keeps 2.
DEFAULT_INTRA_OP = {"torch": 1, "onnxruntime": 2, "tensorrt": 2}
# The onnxruntime sessions that `avcil run --spin` keeps spinning between calls: the lite sound-event CNN, which runs
# alone after a window's end. A session whose threads sleep between calls ran it in 41 ms after an idle gap of 0.2 s
# or more on two quiet cores, against 24 ms back to back (the threads' first wake-ups on idle cores); spinning, 26 ms
# after 0.9 s. In the paced live path (avcil bench speed's decisions, 20 clips, run twice each way) the decision's
# p50 went from 72-73 to 57-60 ms and its p95 from 83-92 to 82-84 ms; every session spinning made both worse (p50
# 88 ms), as above. It is not the default: beside one CPU-bound process (avcil bench load's phases, 40 s each) p95
# went from 111 to 137 ms (1.28x to 1.81x the quiet p95, over the 1.5x target), beside two from 118 to 136 ms; and a
# replay, which never idles, ran 9.5-10.2x real time against 10.5-11.9x.
# Since aiSFX runs its head before a window's end and its tail after (avcil.runtime.sfx_stream), the tail's graph is
# the one that runs alone after the end; the whole graph still does for a window whose head did not run.
SPINNING_GRAPHS = ("audio_sfx", "audio_sfx_columns")
LEARNER_THREADS = 1  # `avcil learn`'s default torch threads: the update is small, encoding its clips is not
LEARNER_NICE = 10  # `avcil learn`'s default priority drop, also that of a class learnt from the page


def default_intra_op(backend: str = "onnxruntime") -> int:
    return max(1, min(DEFAULT_INTRA_OP.get(backend, 2), os.cpu_count() or 1))


@dataclass
class RuntimeThreads:
    intra_op: int = 0  # 0: default_intra_op(backend)
    inter_op: int = 1
    blas: int = 1
    backend: str = "onnxruntime"  # whose default intra_op takes when it is 0
    spinning: tuple[str, ...] = ()  # onnxruntime graphs whose threads spin between calls (--spin: SPINNING_GRAPHS)

    def __post_init__(self) -> None:
        if not self.intra_op:
            self.intra_op = default_intra_op(self.backend)
        if min(self.intra_op, self.inter_op, self.blas) < 1:
            from avcil.errors import InvalidInput

            raise InvalidInput(f"thread counts must be at least 1, got {asdict(self)}")

    def apply(self) -> dict:
        """Set this process's torch and BLAS thread counts; returns `record()`."""
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(self.intra_op)
        if torch.get_num_interop_threads() != self.inter_op:
            try:
                torch.set_num_interop_threads(self.inter_op)
            except RuntimeError:  # torch allows it once, before any inter-op work: the record says what is in use
                pass
        threadpool_limits(self.blas, user_api="blas")
        return self.record()

    def record(self) -> dict:
        """What is in effect (read back, not what was asked for), for the decisions' JSON."""
        import torch

        return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                "onnxruntime_intra_op": self.intra_op,
                "onnxruntime_spinning": list(self.spinning) if self.backend == "onnxruntime" else [],
                "blas": self.blas,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "nice": os.nice(0)}
