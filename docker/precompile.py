"""Import, at image build time, what the image's processes import, so Python writes their pyc.

The images run with a read-only root file system, where Python cannot cache bytecode: every
module without a pyc is compiled again at each start. Compiling everything (pip's default)
puts ~40 MB of pyc in the serving image for modules it never imports (most of mlflow,
databricks-sdk, pip, pygments); importing the serving entry points, and compiling whole the
small packages a server loads more of, writes pyc for what a server loads (a server started
with bytecode writes on compiles nothing more). A module missed here still works: it is
compiled in memory when it is first imported.

``python precompile.py serving|all`` (docker/Dockerfile runs it in the build stage)
"""

from __future__ import annotations

import compileall
import importlib
import sys
import sysconfig
from pathlib import Path

# what `carinspect serve` imports: the app, the model store's registry client and artifact
# repositories (models:/ through the MLflow server), onnxruntime, the CLI
SERVING = (
    "carinspect.cli",
    "carinspect.serving.app",
    "carinspect.serving.model_store",
    "carinspect.serving.batch_predict",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
    "onnxruntime",
    "mlflow",
    "mlflow.artifacts",
    "mlflow.tracking",
    "mlflow.store.artifact.artifact_repository_registry",
    "mlflow.store.artifact.models_artifact_repo",
    "mlflow.store.artifact.mlflow_artifacts_repo",
    "mlflow.store.artifact.http_artifact_repo",
    "mlflow.store.model_registry.rest_store",
    "mlflow.store.tracking.rest_store",
    "mlflow.tracking._model_registry.utils",
)
# small packages a server loads more of than its imports show (PIL's format plugins at the
# first decode, pydantic.v1, anyio's streams, uvicorn's protocols): compiled whole
SERVING_PACKAGES = (
    "carinspect", "PIL", "pydantic", "anyio", "uvicorn", "starlette", "fastapi",
    "fastapi_offline", "typer", "click", "httpx", "httpcore", "h11",
)  # fmt: skip


def main(argv: list[str]) -> int:
    """``serving``: import SERVING; ``all``: compile every module in site-packages."""
    mode = argv[0] if argv else "all"
    if mode == "all":
        # as pip's own compile step: a file that is not Python 3 (a package's template) is skipped
        compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, workers=0)
        return 0
    if mode != "serving":
        sys.stderr.write(f"precompile: unknown mode {mode!r} (serving or all)\n")
        return 2
    for name in SERVING:
        importlib.import_module(name)
    site = Path(sysconfig.get_paths()["purelib"])
    for package in SERVING_PACKAGES:
        compileall.compile_dir(site / package, quiet=2, workers=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
