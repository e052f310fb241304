"""The images and their build: one Dockerfile, built once per image with that image's extras.

| image    | extras        | runs                                              |
| -------- | ------------- | ------------------------------------------------- |
| serving  | cpu           | the serving Deployment (no torch, timm, kfp)      |
| pipeline | pipeline,cpu  | every KFP task on CPU nodes                       |
| gpu      | pipeline,gpu  | the train task on GPU nodes, the GPU serving overlay |

The tags are the ones params.yaml (``kfp.image``, ``kfp.train.image``) and k8s/ use.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from containers import wheelhouse
from containers.engine import DockerError, ImageInfo, docker, image_exists, inspect_image
from containers.rootfs import base_image

logger = logging.getLogger(__name__)

DOCKERFILE = "docker/Dockerfile"
PRECOMPILE = "docker/precompile.py"  # runs in the image's build stage
CONSTRAINTS = "requirements/constraints.txt"
REGISTRY = "ghcr.io/carinspect"
VERSION = "0.1.0"


@dataclass(frozen=True)
class ImageSpec:
    """One image: its name, the extras its venv installs, what it is for."""

    name: str
    repository: str
    extras: str
    purpose: str
    precompile: str = "all"  # docker/precompile.py's mode

    @property
    def tag(self) -> str:
        """The tag params.yaml and k8s/ refer to."""
        return f"{REGISTRY}/{self.repository}:{VERSION}"


IMAGES: dict[str, ImageSpec] = {
    spec.name: spec
    for spec in (
        ImageSpec("serving", "carinspect-serve", "cpu", "the serving Deployment", "serving"),
        ImageSpec("pipeline", "carinspect", "pipeline,cpu", "every KFP task"),
        ImageSpec("gpu", "carinspect-gpu", "pipeline,gpu", "the train task, GPU serving"),
    )
}
DEFAULT_IMAGES = ("serving", "pipeline")


@dataclass(frozen=True)
class BuildOptions:
    """Where a build takes its parts from."""

    root: Path  # the checkout
    cache: Path  # rootfs tarball, wheelhouse and build contexts, kept between builds
    base: str | None = None  # a base image the daemon has; None: the debootstrap one
    fetch: bool = True  # fill the wheelhouse from the network when a wheel is missing


def _context(spec: ImageSpec, opts: BuildOptions) -> Path:
    """A fresh build context: exactly the wheels ``spec`` installs, and the constraints."""
    ctx = opts.cache / "contexts" / spec.name
    if ctx.exists():
        shutil.rmtree(ctx)
    wheels = ctx / "wheels"
    project = wheelhouse.project_wheel(opts.root, wheels)
    house = opts.cache / "wheelhouse"
    constraints = opts.root / CONSTRAINTS
    try:
        files = wheelhouse.resolve(house, project, spec.extras, constraints)
    except DockerError:
        if not opts.fetch:
            raise
        wheelhouse.fill(house, project, spec.extras, constraints)
        files = wheelhouse.resolve(house, project, spec.extras, constraints)
    wheelhouse.stage(files, wheels)
    shutil.copy2(constraints, ctx / "constraints.txt")
    shutil.copy2(opts.root / PRECOMPILE, ctx / "precompile.py")
    return ctx


def _git_state(root: Path) -> tuple[str, str]:
    """The checkout's commit and whether tracked files differ from it (the image's lineage)."""
    from carinspect.tracking.lineage import git_state

    state = git_state(root)
    return state["git.commit"], state["git.dirty"]


def build_image(spec: ImageSpec, opts: BuildOptions) -> ImageInfo:
    """Build one image with no network from its staged wheels; its tag, id and size."""
    base = opts.base or base_image(opts.cache)
    if not image_exists(base):
        raise DockerError(
            f"base image {base}: not in the daemon (docker pull it, or leave --base out to "
            "make one with debootstrap)"
        )
    ctx = _context(spec, opts)
    commit, dirty = _git_state(opts.root)
    logger.info("building %s (%s) on %s", spec.tag, spec.extras, base)
    docker(
        ["build", "--network", "none", "--force-rm", "-f", str(opts.root / DOCKERFILE),
         "--build-arg", f"BASE={base}", "--build-arg", f"EXTRAS={spec.extras}",
         "--build-arg", f"PRECOMPILE={spec.precompile}",
         "--build-arg", f"GIT_COMMIT={commit}", "--build-arg", f"GIT_DIRTY={dirty}",
         "--label", f"org.opencontainers.image.title={spec.repository}",
         "--label", f"org.opencontainers.image.version={VERSION}",
         "-t", spec.tag, str(ctx)],
        f"docker build {spec.tag}",
    )  # fmt: skip
    shutil.rmtree(ctx)
    return inspect_image(spec.tag)
