"""Plots of protocol results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_step_accuracy(curves: dict[str, Sequence[float]], path: Path, title: str) -> None:
    """One line per run: accuracy on all seen classes after each step."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, accuracy in curves.items():
        ax.plot(range(len(accuracy)), np.asarray(accuracy) * 100, marker="o", label=name)
    ax.set(xlabel="step", ylabel="top-1 accuracy on seen classes (%)", title=title, ylim=(0, 100),
           xticks=range(max(len(a) for a in curves.values())))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_run(results: dict, path: Path) -> None:
    """A run's step accuracy beside its accuracy matrix (rows: after step s, columns: task t)."""
    matrix = np.array([[np.nan if a is None else a for a in row] for row in results["accuracy_matrix"]]) * 100
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(np.asarray(results["step_accuracy"]) * 100, marker="o")
    left.set(xlabel="step", ylabel="accuracy on seen classes (%)", ylim=(0, 100), xticks=range(len(matrix)),
             title=f"{results['method']} on {results['dataset']}: mean {results['mean_accuracy'] * 100:.1f} %")
    left.grid(alpha=0.3)
    image = right.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
    for (s, t), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            right.text(t, s, f"{value:.0f}", ha="center", va="center", color="w", fontsize=8)
    right.set(xlabel="task", ylabel="after step", title="accuracy per task (%)", xticks=range(len(matrix)),
              yticks=range(len(matrix)))
    fig.colorbar(image, ax=right)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
