#!/usr/bin/env bash
# Formatter and linter check (CI runs it before the tests): ruff for Python, clang-format for
# the C++/CUDA sources. `bash scripts/lint.sh --fix` rewrites the files instead of checking.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${LT8_LINT_BIN:-.venv/bin}
mapfile -t cxx < <(git ls-files 'cuda/*' 'xla_ffi/*' 'bindings/*' | grep -E '\.(cc|cu|h|cuh)$')
if [ "${1:-}" = "--fix" ]; then
  "$BIN/ruff" check --fix -q .
  "$BIN/ruff" format -q .
  "$BIN/clang-format" -i "${cxx[@]}"
else
  "$BIN/ruff" check -q .
  "$BIN/ruff" format --check -q .
  "$BIN/clang-format" --dry-run -Werror "${cxx[@]}"
fi
echo "lint: ok"
