#!/usr/bin/env bash
# The MLflow UI and REST API on the store the pipeline uses by default: ./mlflow.db (SQLite) for
# runs and the registry, ./mlruns for artifacts. Run it from the project folder:
#   mlflow/local.sh                 # http://127.0.0.1:5000
#   PORT=5001 mlflow/local.sh
# One worker suits a laptop (each extra worker is another ~300 MB Python process); the server
# needs several seconds before it answers.
set -euo pipefail

store="$PWD"
if [ ! -f "$store/params.yaml" ] && [ ! -f "$store/mlflow.db" ]; then
  echo "mlflow/local.sh: run it from the project folder (no params.yaml or mlflow.db in $store)" >&2
  exit 2
fi
if ! command -v mlflow >/dev/null 2>&1 || ! command -v carinspect >/dev/null 2>&1; then
  # shellcheck source=../scripts/env.sh
  source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
fi
# a copied or moved project folder: its mlflow.db still points at the original's mlruns/
carinspect store check --db "$store/mlflow.db" >/dev/null
mkdir -p "$store/mlruns"
exec mlflow server \
  --backend-store-uri "sqlite:///$store/mlflow.db" \
  --artifacts-destination "$store/mlruns" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}" --workers "${WORKERS:-1}"
