"""The field update's settings (`avcil learn`): a module of its own, so that the command line can show their
defaults without importing the learner."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from avcil.train.config import DEFAULT_INSTANCE_WEIGHT, TrainConfig

FIELD_METHODS = ("analytic", "avcil")
# Clips recorded for a new class (`avcil learn --camera`, the page) unless told: the smallest count whose event recall
# on the stream benchmark is within 5 points of 40 clips' (`avcil bench enrol`, benchmarks/results/
# enrol-av-digits-lite.md). With the lite encoders on AV-Digits that is 40 itself: 20 recorded clips found 53 % of
# the new digit's events, 40 found 80 %, fewer than 10 almost none.
DEFAULT_CLIPS = 40
# Windows kept from a stretch of live background (`avcil learn --background --minutes M`): as many as took the stream
# benchmark's false accepts from 41 to 13 per hour of background (docs/decision.md#background-learnt-on-purpose).
STRETCH_WINDOWS = 300
# How long a learner waits for another writer of the model dir (another `avcil learn`, a rollback) before failing.
DEFAULT_LOCK_WAIT_S = 600.0


@dataclass
class FieldSettings(TrainConfig):
    """The gradient update's training settings (`method="avcil"`; the analytic update has none to set): the
    paper's optimiser (`TrainConfig`) with few epochs, since one class of a few dozen clips converges quickly and
    the update should finish within a minute on a CPU.

    A batch holds a quarter new clips and three quarters exemplars (the paper draws half and half, but its steps
    bring several classes). With one new class, half-and-half batches make its logit swamp the old ones: on
    AV-Digits (lite, 9 digits known, the 10th learnt from 40 clips) 32 + 32 for 10 epochs sent 19 % of the old
    digits' test clips to the new one and cost 10 points of old-class accuracy; 16 + 48 for 6 epochs sent 9 % and
    cost 4 points, for about the same time, with the new digit recognised nearly as well (50 % vs 58 %).
    """

    epochs: int = 6
    batch_size: int = 16
    exemplar_batch_size: int = 48
    precision: str = "auto"  # bf16 where the hardware has it natively (see avcil.train.precision.compute_dtype)
    instance_weight: float = DEFAULT_INSTANCE_WEIGHT  # λ_I of D-AVSC instance (AVE's)

    def train_config(self) -> TrainConfig:
        own = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{name: value for name, value in dataclasses.asdict(self).items() if name in own})
