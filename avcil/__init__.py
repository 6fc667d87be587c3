"""avcil: audio-visual class-incremental recognition that keeps learning on the device."""

import os

# OpenMP threads that spin while they wait take the cores from everything else on a shared device: one lite frame
# took 3.6 s in torch beside CPU-bound work, 0.17 s with passive waiting (benchmarks/results/live-latency-*.md).
# Set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenCV's FFmpeg prints its own complaints about a damaged file ("moov atom not found") straight to stderr, beside the
# one line avcil reports for it (avcil.data.decode names the file and the cause).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

__version__ = "0.1.0"


def __getattr__(name: str):
    """`avcil.Model` (avcil/api.py), imported on first use: `import avcil` and the command line's start stay free of
    torch and the encoders."""
    if name == "Model":
        from avcil.api import Model

        return Model
    raise AttributeError(f"module 'avcil' has no attribute {name!r}")


__all__ = ["Model", "__version__"]
