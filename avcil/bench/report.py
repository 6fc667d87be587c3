"""Every benchmark writes the same three things: a JSON with all numbers, a markdown table, a plot."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

import avcil

DEFAULT_DIR = Path("benchmarks/results")


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "avcil": avcil.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


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
