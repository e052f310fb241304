#!/usr/bin/env bash
# Build the container images with no network (docker/Dockerfile, containers/):
# the serving and pipeline images by default, `scripts/images.sh gpu` for the GPU one. Prints
# each image's tag, size and id. Needs a running dockerd; debootstrap makes the base image
# unless --base names one the daemon has (python:3.11-slim-bookworm where a registry is reachable).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
python -m containers build "$@"
