"""Protocol metrics (docs/method.md#the-protocol-and-its-metrics) from the accuracy matrix a[s][t]: accuracy
after step s on the classes of task t (t <= s; later tasks are None)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

Matrix = Sequence[Sequence[float | None]]


def task_accuracies(predictions: np.ndarray, labels: np.ndarray, task_of_class: np.ndarray, tasks: int) -> list[float | None]:
    """Accuracy on the clips of each task t < tasks (None where the task has no clips)."""
    task = task_of_class[labels]
    return [float((predictions[task == t] == labels[task == t]).mean()) if (task == t).any() else None
            for t in range(tasks)]


def forgetting_after(matrix: Matrix, step: int) -> float:
    """Mean over earlier tasks t < step of (best accuracy on t before this step) - (accuracy on t now)."""
    drops = [max(matrix[s][t] for s in range(t, step)) - matrix[step][t] for t in range(step)]
    return float(np.mean(drops))


def summarise(matrix: Matrix, step_accuracy: Sequence[float]) -> dict:
    steps = len(step_accuracy)
    forgetting = [forgetting_after(matrix, s) for s in range(1, steps)]
    return {
        "step_accuracy": [float(a) for a in step_accuracy],
        "mean_accuracy": float(np.mean(step_accuracy)),
        "mean_accuracy_excl_step0": float(np.mean(step_accuracy[1:])) if steps > 1 else None,
        "forgetting": forgetting,
        "mean_forgetting": float(np.mean(forgetting)) if forgetting else None,
    }
