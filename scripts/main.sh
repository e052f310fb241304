#!/usr/bin/env bash
# The main job: set up .venv if needed, then run every pipeline stage with DVC on params.yaml
# (the generated demo dataset by default). Extra arguments go to `dvc repro`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
dvc repro "$@"
dvc metrics show
