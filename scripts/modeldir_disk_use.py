"""The disk a model dir takes per class learnt in the field, at lite's sizes (README.md, docs/architecture.md#layout).

    PYTHONPATH=. python scripts/modeldir_disk_use.py [--classes 5] [--clips 40] [--keep DIR]

Builds a model dir as `avcil train --method analytic` leaves one for the lite profile (features [704] and
[8, 49, 320], the analytic readout's expansion of 2048 and its per-modality readouts), from random features and without exemplars (a class's
exemplars are its own file whatever the format; this measures what the versions themselves take), then learns
`--classes` classes of `--clips` clips each through `learn_class`, the path `avcil learn` takes once its clips are
encoded. Prints, per version, `du -sb` of its folder, of the shared statistics/ and of the whole model dir.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from avcil.features import FeatureShape
from avcil.model.head import FusionHead, HeadConfig
from avcil.modeldir import ModelDir
from avcil.runtime.field import analytic_readout_spec, learn_class

LITE = FeatureShape(audio_dim=704, time=8, positions=49, visual_dim=320)
BASE_CLASSES, BASE_CLIPS = 10, 20


def du(path: Path) -> int:
    """`du -sb PATH` in bytes (0 when it is absent)."""
    if not path.exists():
        return 0
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def features(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return (rng.normal(size=(count, LITE.audio_dim)).astype(np.float32),
            rng.normal(size=(count, *LITE.visual)).astype(np.float32))


def trained_model(root: Path, rng: np.random.Generator) -> ModelDir:
    # As the default analytic method builds it: the readout alone (no fusion part), with its per-modality readouts.
    head = FusionHead(replace(HeadConfig.for_shape(LITE), fusion=False, readout=analytic_readout_spec()),
                      num_classes=BASE_CLASSES)
    audio, visual = (torch.from_numpy(part) for part in features(BASE_CLASSES * BASE_CLIPS, rng))
    with torch.no_grad():
        head.readout.accumulate(head.readout_inputs(audio, visual), torch.arange(len(audio)) % BASE_CLASSES)
    head.readout.solve()
    model = ModelDir(root)
    model.commit(head, None, [{"name": f"c{c}", "step": 0} for c in range(BASE_CLASSES)],
                 {"shape": LITE.to_dict(), "profile": None})
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--clips", type=int, default=40, help="per class (avcil learn --camera records 40)")
    parser.add_argument("--keep", type=Path, help="build the model dir here (default: a temporary folder)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch) / "model"
        trained_model(root, rng)
        rows = [("v0001", "trained", du(root / "versions" / "v0001"), du(root / "statistics"), du(root))]
        for n in range(args.classes):
            version = learn_class(root, f"field{n}", *features(args.clips, rng), progress=False,
                                  log=lambda line: None)["version"]
            rows.append((version, f"+ field{n}", du(root / "versions" / version), du(root / "statistics"), du(root)))
        print(f"{'version':8} {'change':9} {'version folder':>15} {'statistics/':>12} {'model dir':>12}")
        for version, change, folder, shared, whole in rows:
            print(f"{version:8} {change:9} {folder:15,d} {shared:12,d} {whole:12,d}")
        added = (rows[-1][4] - rows[0][4]) / args.classes
        print(f"per field class of {args.clips} clips: {added / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
