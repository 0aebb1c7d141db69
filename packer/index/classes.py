"""What an index says about its classes, and the one-line warnings a user should see.

    summary = class_summary(index, "data/hymenoptera")
    summary.classes            ["ants", "bees"]
    summary.images_per_class   {"ants": 124, "bees": 121}
    summary.warnings           []

The warnings are never fatal; each names what to do instead:
- class folders named like dataset splits (train, val, ...): the data set's root was given
  instead of one split, so the "classes" are the splits;
- no labels at all: images in no class folder train nothing;
- one class holding more than 90% of the images: accuracy near that share is what
  always answering that class scores.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from packer.index.image_index import ImageIndex
from packer.index.table import index_class_names

SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")
DOMINANT_SHARE = 0.9


@dataclass(frozen=True)
class ClassSummary:
    """The classes of an index, their images, and the warnings about them."""

    classes: list[str]
    images_per_class: dict[str, int]
    unlabelled: int  # images with label -1
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"classes": self.classes, "images_per_class": self.images_per_class}

    def line(self) -> str:
        """'2 classes: ants 124, bees 121' (the first 8), or 'no classes'."""
        if not self.classes:
            return "no classes"
        shown = ", ".join(
            f"{name} {count}" for name, count in list(self.images_per_class.items())[:8]
        )
        more = f", ... ({len(self.classes)} in all)" if len(self.classes) > 8 else ""
        return f"{len(self.classes)} class{'es' * (len(self.classes) != 1)}: {shown}{more}"


def class_summary(index: ImageIndex | pa.Table, dataset: str) -> ClassSummary:
    """The classes of `index` (the data set at `dataset`), images per class and warnings."""
    classes = index_class_names(index)
    counts = np.zeros(len(classes), np.int64)
    unlabelled = 0
    for chunk in index.column("label").chunks:  # chunk by chunk: no copy of the column
        labels = chunk.to_numpy(zero_copy_only=False)
        known = labels[(labels >= 0) & (labels < len(classes))]
        counts += np.bincount(known, minlength=len(classes))[: len(classes)]
        unlabelled += int(np.count_nonzero(labels < 0))
    per_class = {name: int(counts[i]) for i, name in enumerate(classes)}
    summary = ClassSummary(classes, per_class, unlabelled)
    summary.warnings.extend(_warnings(summary, dataset, index.num_rows))
    return summary


def _warnings(summary: ClassSummary, dataset: str, images: int) -> list[str]:
    warnings = []
    splits = [name for name in summary.classes if name.lower() in SPLIT_NAMES]
    if splits:
        target = next((n for n in splits if n.lower().startswith("train")), splits[0])
        warnings.append(
            f"the class folder{'s' * (len(splits) > 1)} {', '.join(splits)} of {dataset} "
            f"look{'s' * (len(splits) == 1)} like a dataset split, not a class: point at "
            f"{posixpath.join(dataset.rstrip('/'), target)} instead (its subfolders are the "
            "classes)"
        )
    if images and summary.unlabelled == images:
        warnings.append(
            f"no labels: none of the {images} images of {dataset} is in a class folder (or "
            "has a label), so classification learns nothing from them; put each class's "
            "images in a subfolder named after it"
        )
    labelled = images - summary.unlabelled
    if labelled and summary.images_per_class:
        name, count = max(summary.images_per_class.items(), key=lambda item: item[1])
        if count > DOMINANT_SHARE * labelled:
            warnings.append(
                f"class {name!r} holds {100 * count / labelled:.1f}% of the labelled images: "
                f"an accuracy near that is what always answering {name!r} scores"
            )
    return warnings
