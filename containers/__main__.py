"""``python -m containers build | list`` (scripts/images.sh): the images, built with no network.

Bad input (no dockerd, a missing wheel, a base the daemon lacks) exits 2 with one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from carinspect.errors import InputError
from carinspect.logs import configure_logging
from containers.build import DEFAULT_IMAGES, IMAGES, BuildOptions, build_image
from containers.engine import check_daemon

logger = logging.getLogger("containers")
ROOT = Path(__file__).resolve().parents[1]


def default_cache() -> Path:
    """CARINSPECT_IMAGE_CACHE, or ~/.cache/carinspect/images: kept between builds."""
    env = os.environ.get("CARINSPECT_IMAGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "carinspect" / "images"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/images.sh", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build images; print each one's tag, size and id")
    build.add_argument("names", nargs="*", metavar="IMAGE",
                       help=f"{', '.join(IMAGES)} (default: {' '.join(DEFAULT_IMAGES)})")  # fmt: skip
    build.add_argument("--base", help="a base image the daemon has (default: debootstrap bookworm)")
    build.add_argument("--cache", type=Path, default=None,
                       help="rootfs, wheelhouse and contexts (CARINSPECT_IMAGE_CACHE)")  # fmt: skip
    build.add_argument("--offline", action="store_true",
                       help="never fetch wheels: fail naming the first one missing")  # fmt: skip
    sub.add_parser("list", help="the images: name, tag, extras, what runs in it")
    return ap


def run(argv: list[str]) -> None:
    """Parse ``argv`` and do it."""
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.command == "list":
        for spec in IMAGES.values():
            sys.stdout.write(f"{spec.name:<9} {spec.tag:<42} [{spec.extras}]  {spec.purpose}\n")
        return
    wanted = list(args.names or DEFAULT_IMAGES)
    unknown = [n for n in wanted if n not in IMAGES]
    if unknown:
        raise InputError(f"images {unknown}: unknown (known: {', '.join(IMAGES)})")
    check_daemon()
    opts = BuildOptions(ROOT, args.cache or default_cache(), args.base, fetch=not args.offline)
    for name in wanted:
        info = build_image(IMAGES[name], opts)
        sys.stdout.write(f"{info.tag}  {info.size_mb:.0f} MB  {info.id}\n")
        sys.stdout.flush()


def main() -> None:
    """Entry point: bad input exits 2 with one line."""
    try:
        run(sys.argv[1:])
    except InputError as err:
        logger.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
