#!/usr/bin/env bash
# The main job: install rtk, then run the built-in quickstart experiment (`rtk run`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/rtk run "$@"
