"""The training loop's settings, in a module without torch, so that the command line and the field settings can
show and fill them on a device without importing the learner. The one source of these defaults: the paper's."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from avcil.data.clips import PAPER_AVE, BenchmarkDefaults

# The paper's exemplar budget on AVE (docs/method.md#exemplar-memory), for a benchmark that sets none.
DEFAULT_MEMORY_BUDGET = PAPER_AVE.memory_budget
# λ_I of D-AVSC instance on AVE: build_method's default and the field update's (FieldSettings).
DEFAULT_INSTANCE_WEIGHT = PAPER_AVE.instance_weight


@dataclass
class TrainConfig:
    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128  # new-class clips per batch
    exemplar_batch_size: int = 128  # exemplars drawn beside them
    eval_batch_size: int = 256
    seed: int = 42
    num_workers: int = 0  # feature-loading processes; >0 helps for stores on disk
    device: str = "cpu"
    precision: str = "fp32"  # of the training forward: fp32 | bf16 | auto (see compute_dtype)

    def to_dict(self) -> dict:
        return asdict(self)


def given(values: dict) -> dict:
    """The settings that were given: the command line's flags the user left out arrive as None."""
    return {name: value for name, value in values.items() if value is not None}


def train_config(defaults: BenchmarkDefaults = BenchmarkDefaults(), **chosen) -> TrainConfig:
    """The paper's settings, the benchmark's over them, and the `chosen` ones (None: not chosen) over those."""
    own = {f.name for f in dataclasses.fields(TrainConfig)}
    benchmark = {name: value for name, value in defaults.given().items() if name in own}
    return dataclasses.replace(TrainConfig(), **{**benchmark, **given(chosen)})


def protocol_settings(defaults: BenchmarkDefaults = BenchmarkDefaults(), **chosen) -> dict:
    """`run_protocol`'s memory budget and fusion width: chosen, else the benchmark's, else the paper's."""
    settings = {"memory_budget": defaults.memory_budget or DEFAULT_MEMORY_BUDGET, "fusion_dim": defaults.fusion_dim}
    return {**settings, **given(chosen)}
