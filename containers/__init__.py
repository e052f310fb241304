"""The project's container images, built with no network: a base rootfs, a wheelhouse, builds.

A tool of the checkout, not part of the carinspect package (no image carries its builder).
``python -m containers build`` (scripts/images.sh) makes the serving image (no torch) and the
pipeline image (every KFP task) from docker/Dockerfile, on a base from ``debootstrap`` or a
registry's ``python:3.11-slim``, installing only from a wheelhouse prepared on the host.
"""
