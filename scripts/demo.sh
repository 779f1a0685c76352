#!/usr/bin/env bash
# The README's demo command: set up (once), build, run `python -m lt8 demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m lt8 demo "$@"
