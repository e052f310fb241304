#!/usr/bin/env bash
# The test command: set up .venv if needed, then lint, type-check and run the test suite.
# Extra arguments go to pytest (for example: -k ingest, or -m slow with CARINSPECT_SLOW=1).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
source "$(dirname "${BASH_SOURCE[0]}")/system.sh"
cd "$ROOT"
ruff check src tests benchmarks components pipelines fuzz containers docker docs
mypy src components pipelines containers docs/hooks.py
pytest "$@"
