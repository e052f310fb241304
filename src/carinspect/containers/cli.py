"""``carinspect images build | list``: the project's images, built here with no network."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

images_app = typer.Typer(help="The container images: build them with no network, list them.")

ImagesOpt = Annotated[
    list[str] | None,
    typer.Argument(help="Images to build: serving, pipeline, gpu (default: serving pipeline)."),
]


def default_cache() -> Path:
    """CARINSPECT_IMAGE_CACHE, or ~/.cache/carinspect/images: kept between builds."""
    env = os.environ.get("CARINSPECT_IMAGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "carinspect" / "images"


def _root() -> Path:
    """The checkout: the folder with docker/Dockerfile above this package, or the cwd."""
    from carinspect.containers.images import DOCKERFILE

    for cand in (Path.cwd(), *Path(__file__).resolve().parents):
        if (cand / DOCKERFILE).is_file() and (cand / "pyproject.toml").is_file():
            return cand
    from carinspect.errors import InputError

    raise InputError(f"{DOCKERFILE}: not found here or above (run from the checkout)")


@images_app.command("build")
def build(
    names: ImagesOpt = None,
    base: Annotated[
        str | None,
        typer.Option(help="Base image the daemon has (default: a debootstrap bookworm one)."),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Rootfs, wheelhouse and contexts (CARINSPECT_IMAGE_CACHE).")
    ] = None,
    offline: Annotated[
        bool, typer.Option(help="Never fetch wheels: fail naming the first one missing.")
    ] = False,
) -> None:
    """Build the images; print each one's tag, size and id."""
    from carinspect.containers.engine import check_daemon
    from carinspect.containers.images import DEFAULT_IMAGES, IMAGES, BuildOptions, build_image
    from carinspect.errors import InputError

    wanted = list(names or DEFAULT_IMAGES)
    unknown = [n for n in wanted if n not in IMAGES]
    if unknown:
        raise InputError(f"images {unknown}: unknown (known: {', '.join(IMAGES)})")
    check_daemon()
    opts = BuildOptions(root=_root(), cache=cache or default_cache(), base=base, fetch=not offline)
    for name in wanted:
        info = build_image(IMAGES[name], opts)
        typer.echo(f"{info.tag}  {info.size_mb:.0f} MB  {info.id}")


@images_app.command("list")
def list_images() -> None:
    """The images this checkout builds: name, tag, extras, what runs in it."""
    from carinspect.containers.images import IMAGES

    for spec in IMAGES.values():
        typer.echo(f"{spec.name:<9} {spec.tag:<42} [{spec.extras}]  {spec.purpose}")
