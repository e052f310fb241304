"""The data, ingest and split sections: where the photos come from and how they are cut."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from carinspect.config.base import Section

DemoClass = Literal["clean", "dirty", "dusty", "muddy"]
_BINARY_DEMO: tuple[DemoClass, ...] = ("clean", "dirty")


class DemoConfig(Section):
    """The generated demo dataset (``data.source: demo``)."""

    per_class: int = Field(160, ge=4, le=100_000, description="images generated per class")
    seed: int = 0
    broken: bool = Field(True, description="add deliberately broken/duplicate files")
    damaged: float = Field(
        0.35,
        ge=0.0,
        le=1.0,
        description="fraction of cars drawn with scratches and a dent (the damage task)",
    )
    classes: list[DemoClass] = Field(
        default_factory=lambda: list(_BINARY_DEMO),
        min_length=2,
        description="classes to draw: clean/dirty (binary) or a severity scale such as "
        "clean/dusty/muddy (multiclass)",
    )

    @model_validator(mode="after")
    def _distinct_classes(self) -> DemoConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.demo.classes repeats a class: {self.classes}")
        return self


class DataConfig(Section):
    """Where the labelled images come from.

    ``source`` is one of: ``demo``; a local folder with one subfolder per class; a CSV manifest
    (``path,label[,split][,group]``, or one column per task with ``task`` naming the one to
    train on, or a list of them to train together); a COCO JSON file (``coco_tasks`` maps its
    categories to tasks); ``s3://bucket/prefix`` (one sub-prefix per
    class); ``dvc://<repo>@<rev>#<path>`` (a folder per class inside a DVC/git repo).
    """

    source: str = "demo"
    task: str | list[str] | None = Field(
        None,
        description="CSV manifests with a column per task (path,cleanliness,damage,...): the "
        "column to train on, or a list of columns to train together (one head each); unset: "
        "`label`, or the only task column. COCO with coco_tasks: the task(s); unset: all",
    )
    coco_tasks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="COCO sources: the category names of each task, e.g. {cleanliness: [clean, "
        "dirty], damage: [damaged, intact]}; an image's label for a task is its one category "
        "from that list",
    )
    demo: DemoConfig = DemoConfig()
    feedback: str = Field(
        "",
        description="a feedback dataset folder (`carinspect feedback import` writes its photos/, "
        "one subfolder per class, tracked by photos.dvc): its photos are ingested beside "
        "data.source's; a folder with no photos/ (or empty: none) adds none. params.yaml names "
        "data/feedback, which dvc.yaml's ingest stage depends on; dvc://<repo>@<rev>#<folder> "
        "or s3://bucket/prefix read a revision of it from elsewhere (a KFP run's pod)",
    )
    feedback_new_classes: bool = Field(
        False, description="take classes that only data.feedback has (reviewers' labels from "
        "another project add classes silently otherwise); false: ingest stops, naming them",
    )  # fmt: skip

    format: Literal["files", "shards"] = Field(
        "files",
        description="how ingest stores the images it keeps: files (one PNG each under "
        "images/) or shards (webdataset tar files with an index, images/shards.json), which "
        "training streams from local disk or S3 with a disjoint share per rank and worker",
    )
    shards: str = Field(
        "",
        description="data.format shards: where the shards go; empty: inside the ingest "
        "output (images/), versioned by DVC with it; s3://bucket/prefix: uploaded there (the "
        "index in images/ names the prefix; add the prefix to dvc.yaml's ingest outs with "
        "cache: false and persist: true to track it)",
    )

    @model_validator(mode="after")
    def _source_not_empty(self) -> DataConfig:
        if not self.source.strip():
            raise ValueError("data.source must not be empty")
        if self.shards and self.format != "shards":
            raise ValueError(
                f"data.shards {self.shards!r} is set but data.format is {self.format!r}"
            )
        if self.shards and not self.shards.startswith("s3://"):
            raise ValueError(
                f"data.shards {self.shards!r}: give an s3://bucket/prefix, or leave it empty "
                "to keep the shards inside the ingest output"
            )
        if self.shards.startswith("s3://") and not self.shards[5:].split("/")[0]:
            raise ValueError(f"data.shards {self.shards!r}: no bucket name")
        if isinstance(self.task, list) and (not self.task or len(set(self.task)) != len(self.task)):
            raise ValueError(f"data.task lists no task or repeats one: {self.task}")
        seen: dict[str, str] = {}
        for name, members in self.coco_tasks.items():
            for category in members:
                if category in seen:
                    raise ValueError(
                        f"data.coco_tasks: category {category!r} is in both {seen[category]!r} "
                        f"and {name!r}"
                    )
                seen[category] = name
            if len(members) < 2:
                raise ValueError(f"data.coco_tasks.{name} needs at least two categories")
        return self


class IngestConfig(Section):
    """Decoding, validation and the resized image cache."""

    short_side: int = Field(
        128, ge=16, le=4096, description="cache images resized to this short side"
    )
    min_side: int = Field(32, ge=1, description="images with a smaller side are dropped")
    max_pixels: int = Field(
        50_000_000, ge=1, description="decompression-bomb guard: width*height above this is dropped"
    )
    max_bytes: int = Field(50 * 1024 * 1024, ge=1, description="files larger than this are dropped")
    workers: int = Field(2, ge=1, le=64, description="parallel decoders (threads)")
    near_duplicate_distance: int = Field(
        4, ge=0, le=64, description="max Hamming distance of 64-bit perceptual hashes"
    )
    shortcut_auc: float = Field(
        0.8, gt=0.5, le=1.0, description="warn when size/aspect/grayscale alone reach this AUC"
    )
    shortcut_folds: int = Field(5, ge=2, le=20)
    shard_mb: float = Field(
        64, gt=0, le=4096, description="data.format shards: size each shard is filled to (MiB)"
    )
    min_per_class: int = Field(
        3, ge=1, description="a class with fewer usable images is refused before anything is "
        "written (split needs one per train/val/test split: at least as many as it has)",
    )  # fmt: skip


class SplitConfig(Section):
    """Stratified, group-aware train/val/test split."""

    train: float = Field(0.7, ge=0.0, le=1.0)
    val: float = Field(0.15, ge=0.0, le=1.0)
    test: float = Field(0.15, ge=0.0, le=1.0)
    seed: int = 42
    respect_manifest_split: bool = Field(
        True, description="keep the split column of a CSV manifest when it has one"
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions train+val+test must sum to 1, got {total:g}")
        if self.train <= 0:
            raise ValueError("split.train must be greater than 0")
        return self

    def fractions(self) -> dict[str, float]:
        """Fraction per split name, in SPLIT_NAMES order."""
        return {"train": self.train, "val": self.val, "test": self.test}
