#!/usr/bin/env bash
# The main job: set up .venv if needed, then run every pipeline stage with DVC on params.yaml
# (the generated demo dataset by default). Extra arguments go to `dvc repro`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
dvc repro "$@"
# one table per stage: the combined `dvc metrics show` is too wide to read
for m in data/ingest/metrics.json data/split/metrics.json models/train/metrics.json \
  models/evaluate/metrics.json models/threshold/metrics.json models/export/metrics.json; do
  [ -f "$m" ] && dvc metrics show "$m"
done
if [ -f models/registered.json ]; then
  echo
  # the newest versions, their aliases, test metric and lineage (not `| head`: under pipefail
  # the closed pipe failed the main job once the registry held more than five versions)
  carinspect models --limit 5
  echo "next: carinspect promote     # alias champion -> the challenger, if it passes the gate"
fi
exit 0
