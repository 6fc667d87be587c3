"""The field update's settings (`avcil learn`): a module of its own, so that the command line can show their
defaults without importing the learner."""

from __future__ import annotations

from dataclasses import dataclass

FIELD_METHODS = ("analytic", "avcil")


@dataclass
class FieldSettings:
    """The gradient update's training settings (`method="avcil"`; the analytic update has none to set): the paper's
    optimiser with few epochs, since one class of a few dozen clips converges quickly and the update should finish
    within a minute on a CPU.

    A batch holds a quarter new clips and three quarters exemplars (the paper draws half and half, but its steps
    bring several classes). With one new class, half-and-half batches make its logit swamp the old ones: on
    AV-Digits (lite, 9 digits known, the 10th learnt from 40 clips) 32 + 32 for 10 epochs sent 19 % of the old
    digits' test clips to the new one and cost 10 points of old-class accuracy; 16 + 48 for 6 epochs sent 9 % and
    cost 4 points, for about the same time, with the new digit recognised nearly as well (50 % vs 58 %).
    """

    epochs: int = 6
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    exemplar_batch_size: int = 48
    instance_weight: float = 0.5
    seed: int = 42
    device: str = "cpu"
    precision: str = "auto"  # bf16 where the hardware has it natively (see avcil.train.learner.compute_dtype)

    def train_config(self):
        from avcil.train.learner import TrainConfig

        return TrainConfig(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                           batch_size=self.batch_size, exemplar_batch_size=self.exemplar_batch_size, seed=self.seed,
                           device=self.device, precision=self.precision)
