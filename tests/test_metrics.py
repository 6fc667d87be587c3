import numpy as np
import pytest

from avcil.train import metrics


def test_forgetting_and_means_by_hand():
    matrix = [[0.9, None, None], [0.6, 0.8, None], [0.7, 0.5, 0.9]]
    step_acc = [0.9, 0.7, 0.7]
    summary = metrics.summarise(matrix, step_acc)
    # After step 1: task 0 best before = 0.9 -> 0.6: drop 0.3.
    # After step 2: task 0 best over steps 0-1 = 0.9 -> 0.7 (0.2); task 1 best over step 1 = 0.8 -> 0.5 (0.3).
    assert summary["forgetting"] == pytest.approx([0.3, 0.25])
    assert summary["mean_forgetting"] == pytest.approx(0.275)
    assert summary["mean_accuracy"] == pytest.approx(np.mean(step_acc))
    assert summary["mean_accuracy_excl_step0"] == pytest.approx(0.7)


def test_single_step_has_no_forgetting():
    summary = metrics.summarise([[0.8]], [0.8])
    assert summary["mean_forgetting"] is None and summary["mean_accuracy_excl_step0"] is None


def test_task_accuracies():
    labels = np.array([0, 1, 2, 3, 3])
    predictions = np.array([0, 0, 2, 3, 1])
    task_of_class = np.array([0, 0, 1, 1])
    assert metrics.task_accuracies(predictions, labels, task_of_class, 2) == [0.5, pytest.approx(2 / 3)]
