#!/usr/bin/env bash
# Debian packages the test suite drives for real: chromium + chromium-driver (the /docs test in
# a headless browser), docker.io + debootstrap (the container tier builds and runs the images in
# a dockerd of its own). Installed when missing and this shell can (root with apt-get);
# otherwise the tests that need them are skipped and say what to install.
# Sourced by scripts/test.sh.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium chromium-driver)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "carinspect: installing ${missing[*]} (Debian packages the tests use)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >/dev/null
  else
    echo "carinspect: ${missing[*]} not installed: the browser tests will be skipped" >&2
  fi
fi
