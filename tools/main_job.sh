#!/usr/bin/env bash
# The main job: sets up the environment if needed, then trains a plain and an adversarial
# segmentor on the CamVid sample and writes the per-class comparison to outputs/main_job.
# Extra arguments go to `ganaug seg-compare` (e.g. --iters 300 --seeds 0 1).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/setup_env.sh"
venv="${GANAUG_VENV:-$repo/.venv}"
cd "$repo"
exec "$venv/bin/ganaug" seg-compare --out "${GANAUG_OUT:-outputs/main_job}" "$@"
