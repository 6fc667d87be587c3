"""avcil: audio-visual class-incremental recognition that keeps learning on the device."""

__version__ = "0.1.0"
