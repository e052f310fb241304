"""A new user's own photos through the shipped params.yaml, exactly as the README tells it.

Two classes named other than the demo's stop before training until the rule names one of them,
then reach a registered version; three classes go straight through; the same photos with
shuffled labels are refused at register with the baseline verdict. Slow: `dvc repro` with the
shipped model and epochs, three times.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, VENV_BIN
from tests.e2e.own_photos import write_photos
from tests.e2e.project import commit_all, copy_project

pytestmark = pytest.mark.slow

PER_CLASS = 80


def _readme_blocks() -> list[str]:
    """The README's two bash blocks of the "your own photos" flow, in order."""
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("Your own photos, one folder per class")
    part = readme[start : readme.index("`dvc repro` ends with the run's summary", start)]
    blocks = re.findall(r"```bash\n(.*?)```", part, re.S)
    assert len(blocks) == 2, part
    return blocks


def _user(tmp_path: Path, classes: list[str]) -> Path:
    """A fresh project as shipped (params.yaml untouched) with photos in data/raw/<class>/."""
    project = copy_project(tmp_path, params=True)
    commit_all(project)
    write_photos(project / "data" / "raw", classes, PER_CLASS)
    return project


def _bash(project: Path, script: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=project, env=env,
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip


def _registered(project: Path) -> dict[str, str]:
    return json.loads((project / "models" / "registered.json").read_text())


def test_two_classes_stop_before_training_then_register_once_the_rule_names_one(
    tmp_path: Path,
) -> None:
    first, second = _readme_blocks()
    project = _user(tmp_path, ["pickup", "sedan"])
    stopped = _bash(project, first)
    assert stopped.returncode != 0, stopped.stdout
    said = stopped.stdout + stopped.stderr
    assert "threshold.positive_class 'clean' is not one of ['pickup', 'sedan']" in said
    assert "Running stage 'train'" not in said  # before any training

    done = _bash(project, second)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Running stage 'train'" in done.stdout
    summary = (project / "models" / "summary.txt").read_text()
    assert summary in done.stdout.replace("\r", "")  # dvc repro ends with it
    assert "verdict   better than always answering" in summary
    assert f"version   carinspect {_registered(project)['version']}" in summary
    rule = json.loads((project / "models" / "threshold" / "threshold.json").read_text())
    assert rule["positive_class"] == "pickup"


def test_three_classes_go_through_and_predict_scores_the_folder_tree(tmp_path: Path) -> None:
    first, _ = _readme_blocks()
    project = _user(tmp_path, ["pickup", "sedan", "van"])
    done = _bash(project, first)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (project / "models" / "summary.txt").read_text().splitlines()
    assert summary[0].startswith(f"data      {3 * PER_CLASS} photos in 3 classes (pickup")
    assert any(line.startswith("per class F1 pickup") for line in summary)
    assert any(line.startswith("rule      the most probable class, always") for line in summary)
    mistakes = (project / "models" / "evaluate" / "mistakes.csv").read_text().splitlines()
    assert mistakes[0].startswith("task,kind,source,path,label,predicted")
    assert all("data/raw/" in line for line in mistakes[1:])  # the user's own file names

    version = _registered(project)["version"]
    predicted = _bash(
        project,
        f"MODEL_URI=models:/carinspect/{version} carinspect predict data/raw --out preds.csv",
    )
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.splitlines()
    assert lines[0].startswith(f"{3 * PER_CLASS} inputs, 0 unusable")
    assert lines[1].startswith("against the folder names: accuracy ")
    assert f"of {3 * PER_CLASS} photos in class folders" in lines[1]
    assert lines[2].split() == [
        "true",
        "\\",
        "answer",
        "pickup",
        "sedan",
        "van",
        *lines[2].split()[6:],
    ]
    assert [row.split()[0] for row in lines[3:6]] == ["pickup", "sedan", "van"]


def test_shuffled_labels_are_refused_at_register_with_the_baseline_verdict(
    tmp_path: Path,
) -> None:
    first, _ = _readme_blocks()
    project = _user(tmp_path, ["pickup", "sedan", "van"])
    raw = project / "data" / "raw"
    photos = sorted(raw.rglob("*.*"))
    folders = [p.parent.name for p in photos]
    random.Random(7).shuffle(folders)
    for photo, folder in zip(photos, folders, strict=True):  # the same photos, random labels
        if photo.parent.name != folder:
            shutil.move(photo, raw / folder / f"moved_{photo.name}")
    done = _bash(project, first)
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Running stage 'register'" in said
    assert re.search(r"not registered: (no|not shown) better than always answering '\w+'", said)
    verdict = json.loads((project / "models" / "evaluate" / "verdict.json").read_text())
    assert verdict["tasks"][0]["problems"]
    assert not (project / "models" / "registered.json").exists()
