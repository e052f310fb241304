#!/usr/bin/env bash
# The main job: set up .venv if needed, then run every pipeline stage with DVC on params.yaml
# (the generated demo dataset by default). Extra arguments go to `dvc repro`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
summary=models/summary.txt
before=$(stat -c %.9Y "$summary" 2>/dev/null || echo none)
dvc repro "$@"
# dvc.yaml's last stage printed the run's summary when anything ran; when nothing did (the
# pipeline was up to date), print the one it wrote last time
if [ "$before" != none ] && [ "$before" = "$(stat -c %.9Y "$summary" 2>/dev/null || echo none)" ]; then
  echo
  echo "(pipeline up to date; the summary of its last run)"
  cat "$summary"
fi
exit 0
