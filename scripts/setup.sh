#!/usr/bin/env bash
# Creates .venv (once) with lt8's dependencies and builds lt8 into it (every time, incrementally).
# Torch is pinned to 2.13.0, the CPU build that CPU machines of this project keep on disk, so no
# multi-GB CUDA build is downloaded. Set LT8_CUDA=OFF to skip the CUDA kernels, LT8_CUDA_ARCHS
# (e.g. "90") to build fewer architectures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lt8-deps-$(sha1sum scripts/requirements.txt | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r scripts/requirements.txt
  touch "$stamp"
fi
# --no-build-isolation: build against the installed jaxlib (XLA FFI headers) and nanobind.
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
