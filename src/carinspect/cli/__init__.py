"""``carinspect``: one command per pipeline stage, plus registry, serving, KFP and data commands.

This is the adapter dvc.yaml calls: it reads params.yaml into the typed config and hands each
stage its section and paths. Stages never read params.yaml or the environment themselves.
Importing the package registers every command on :data:`app`, module by module, in the order
`carinspect --help` lists them (hence the import order below).
"""

# isort: off
from carinspect.cli import stages, registry, inference, pipeline, admin, review, rollout
from carinspect.cli.app import app, main

# isort: on

__all__ = [
    "admin",
    "app",
    "inference",
    "main",
    "pipeline",
    "registry",
    "review",
    "rollout",
    "stages",
]
