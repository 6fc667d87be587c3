"""Every benchmark writes the same three things: a JSON with all numbers, a markdown table, a plot."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

import avcil

DEFAULT_DIR = Path("benchmarks/results")


def machine() -> dict:
    return {"platform": platform.platform(), "processor": cpu_model(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "avcil": avcil.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def cpu_model() -> str:
    """The CPU's model name as Linux reports it (timings differ between machines that both say x86_64), else the
    architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95, 99), suffix: str = "_ms",
                digits: int | None = None) -> dict:
    """{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...} of `values` (numpy's linear interpolation), each rounded to
    `digits` when given; None for each when there are no values. The one percentile helper of the benchmarks."""
    values = np.asarray(list(values), dtype=float)
    def one(q: float):
        if not values.size:
            return None
        value = float(np.percentile(values, q))
        return round(value, digits) if digits is not None else value
    return {f"p{q:g}{suffix}": one(q) for q in qs}


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """`columns`: (key, header) pairs; floats are shown with 3 decimals, missing values as '-'."""
    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, name: str, payload: dict, table: str, title: str,
                 plot: Callable[[Path], None]) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "markdown": out_dir / f"{name}.md", "plot": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    paths["markdown"].write_text(f"# {title}\n\n{table}")
    plot(paths["plot"])
    return paths


def machine_load() -> list[float]:
    """The load averages over 1, 5 and 15 minutes, as the benchmarks on the streams record them before and after."""
    return [round(x, 2) for x in os.getloadavg()]
