#!/usr/bin/env bash
# Label Studio for the review loop's tests (`carinspect review push/pull` against a real server):
# PyPI's label-studio in a virtual environment of its own (its pins clash with ours), made once
# per machine under ~/.cache/carinspect (a .complete marker: an interrupted install is redone).
# Sourced by scripts/system.sh for the slow tier. LABEL_STUDIO_BIN is exported for the tests.
LABEL_STUDIO_VERSION=1.23.2
# What label-studio leaves unbounded and a later release broke: sentry-sdk 3.0 refuses the
# send_default_pii option Label Studio 1.23 passes at start-up (the server exits at once).
LABEL_STUDIO_PINS="sentry-sdk<3"
ls_home="${CARINSPECT_LABEL_STUDIO_HOME:-$HOME/.cache/carinspect/label-studio-$LABEL_STUDIO_VERSION}"
if [ "$(cat "$ls_home/venv/.complete" 2>/dev/null)" != "$LABEL_STUDIO_PINS" ]; then
  echo "carinspect: installing label-studio $LABEL_STUDIO_VERSION in $ls_home/venv (once)" >&2
  rm -rf "$ls_home/venv"
  mkdir -p "$ls_home"
  python3.11 -m venv "$ls_home/venv"
  "$ls_home/venv/bin/pip" install -q --disable-pip-version-check \
    "label-studio==$LABEL_STUDIO_VERSION" $LABEL_STUDIO_PINS >&2
  echo "$LABEL_STUDIO_PINS" > "$ls_home/venv/.complete"
fi
export LABEL_STUDIO_BIN="$ls_home/venv/bin/label-studio"
