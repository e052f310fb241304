#!/usr/bin/env bash
# Debian packages the test suite drives for real: chromium + chromium-driver (the /docs test in
# a headless browser), docker.io + debootstrap (the container tier builds and runs the images in
# a dockerd of its own), prometheus (promtool checks and unit-tests the alert rules; the rollout
# tests scrape a real server with it). Installed when missing and this shell can (root with apt-get);
# otherwise the tests that need them are skipped and say what to install. The slow tier also
# gets Label Studio (scripts/labelstudio.sh: PyPI's, in a virtual environment of its own).
# Sourced by scripts/test.sh.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium chromium-driver)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "carinspect: installing ${missing[*]} (Debian packages the tests use)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >/dev/null
  else
    echo "carinspect: ${missing[*]} not installed: the tests that need them will be skipped" >&2
  fi
fi
# Label Studio for the review loop's slow tests: its own virtual environment, made once
if [ "${CARINSPECT_SLOW:-}" = "1" ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/labelstudio.sh"
fi
