#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv.
# Sourced by scripts/main.sh and scripts/test.sh. The environment is rebuilt only when
# pyproject.toml or requirements/constraints.txt change (their hash is kept in .venv/.stamp).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CARINSPECT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

stamp="$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "carinspect: building virtual environment in $VENV" >&2
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
  rm -f "$VENV/.stamp"
  "$PYTHON" -m venv "$VENV"
  # torch/torchvision first, in their own command, so pip takes the files on local disk
  # instead of resolving another build.
  # (pip warns about every local index folder a package is missing from: drop that noise)
  "$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 \
    2> >(grep -v 'is ignored: it is neither' >&2)
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    -c "$ROOT/requirements/constraints.txt" -e "$ROOT[pipeline,cpu,dev]" \
    2> >(grep -v 'is ignored: it is neither' >&2)
  # KServe's typed models (the InferenceService test validates k8s/kserve against them). Its
  # server's pins (psutil<6, pandas<3) conflict with ours, so the SDK goes to a folder of its
  # own without dependencies; the tests import only kserve.models from it.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    --target "$VENV/kserve-sdk" kserve==0.21.0 2> >(grep -v 'is ignored: it is neither' >&2)
  echo "$stamp" > "$VENV/.stamp"
fi

export PATH="$VENV/bin:$PATH"
export NO_ALBUMENTATIONS_UPDATE=1
export MPLBACKEND=Agg
