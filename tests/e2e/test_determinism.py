"""The main job in two fresh copies of the checkout: the same weights, the same figures.

`train.deterministic: true` promises that the same data, params.yaml and machine kind give the
same trained weights. Two copies of the working tree (what two clones hold), each its own git
repo with its own DVC cache and MLflow store, run `scripts/main.sh` with params.yaml as it is;
their metrics and the best checkpoint's weights digest must be equal, and the README's main job
example must show what they printed: its shape, and a test accuracy inside the range it states.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.docs.shape import first_mismatch, matches
from tests.e2e.project import sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

VARYING = {"epoch_seconds", "images_per_s"}  # measured time, not a result


def _copy_checkout(dest: Path) -> Path:
    """The tracked and untracked (not ignored) files of the checkout, as a fresh git repo."""
    dest.mkdir()
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in listed.decode().split("\0"):
        if name and (REPO_ROOT / name).is_file():  # a tracked file deleted in the tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, dest / name)
    sh(dest, "git", "init", "-q")
    sh(dest, "git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    sh(dest, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "clone")
    return dest


def _main_job(clone: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["CARINSPECT_VENV"] = str(REPO_ROOT / ".venv")  # the same packages, not a second install
    env["COLUMNS"] = "200"
    done = subprocess.run(
        ["scripts/main.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, f"main job failed in {clone}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _figures(clone: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for name in ("models/train", "models/evaluate", "models/threshold", "models/export"):
        metrics = json.loads((clone / name / "metrics.json").read_text())
        found[name] = {k: v for k, v in metrics.items() if k not in VARYING}
    return found


def _weights(clone: Path) -> str:
    from carinspect.modeling.checkpoint import load_checkpoint, weights_digest

    return weights_digest(load_checkpoint(clone / "models" / "train" / "best.pt")["model"])


def _readme_example() -> tuple[list[str], tuple[float, float]]:
    """The README's main job output, and the test accuracy range it states."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```console\n\$ scripts/main\.sh\n(.*?)```", readme, re.S)
    assert block, "README.md: no ```console block of `$ scripts/main.sh`"
    stated = re.search(r"test accuracy\s+between\s+([\d.]+)\s+and\s+([\d.]+)", readme)
    assert stated, "README.md: no stated range ('test accuracy between X and Y')"
    return block.group(1).splitlines(), (float(stated.group(1)), float(stated.group(2)))


def test_two_clones_train_the_same_weights_and_print_the_readme_figures(tmp_path: Path) -> None:
    clones = [_copy_checkout(tmp_path / name) for name in ("a", "b")]
    printed = [_main_job(clone) for clone in clones]

    assert _figures(clones[0]) == _figures(clones[1])
    assert _weights(clones[0]) == _weights(clones[1])

    shown, (low, high) = _readme_example()
    lines = printed[0].splitlines()
    assert matches(shown, lines), (
        f"README's main job example no longer has the shape of its output "
        f"({first_mismatch(shown, lines)}):\n{printed[0]}"
    )
    test = json.loads((clones[0] / "models" / "evaluate" / "metrics.json").read_text())["test"]
    assert low <= test["accuracy"] <= high, (
        f"test accuracy {test['accuracy']} is outside the range the README states [{low}, {high}]"
    )

    # bf16 (train.amp on a CPU that has it, as both clones trained) against fp32 on the same
    # data: within the tolerance docs/determinism.md states
    from carinspect.training.cpu import bf16_in_hardware

    if not bf16_in_hardware():
        return  # both clones trained in fp32 here: nothing to compare
    params = yaml.safe_load((clones[1] / "params.yaml").read_text())
    params["train"]["amp"] = False
    (clones[1] / "fp32.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "carinspect"), "train", "--params", "fp32.yaml",
         "--ingest", "data/ingest", "--splits", "data/split/splits.csv", "--out", "fp32"],
        cwd=clones[1], env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    f1 = [json.loads((path / "metrics.json").read_text())["val_macro_f1"]
          for path in (clones[0] / "models" / "train", clones[1] / "fp32")]  # fmt: skip
    assert abs(f1[0] - f1[1]) <= 0.02, f"val macro-F1 bf16 {f1[0]} vs fp32 {f1[1]}"
