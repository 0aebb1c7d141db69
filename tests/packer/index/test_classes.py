"""What an index says about its classes, and the warnings (packer/index/classes.py)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from packer.index.classes import class_summary
from packer.index.image_index import ImageIndex
from packer.synthetic import synthetic_index


def _index(labels: list[int], class_names: list[str]) -> ImageIndex:
    table = synthetic_index(np.full(len(labels), 64), np.full(len(labels), 48)).table
    table = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64())
    )
    metadata = {**(table.schema.metadata or {}), b"navit.class_names": json.dumps(class_names)}
    return ImageIndex.from_table(table.replace_schema_metadata(metadata))


def test_images_per_class_are_counted_by_name_without_warnings():
    summary = class_summary(_index([0, 1, 1, 0, 1], ["ants", "bees"]), "data/hymenoptera")
    assert summary.to_dict() == {
        "classes": ["ants", "bees"],
        "images_per_class": {"ants": 2, "bees": 3},
    }
    assert summary.warnings == [] and summary.line() == "2 classes: ants 2, bees 3"


def test_split_folders_as_classes_say_split_and_the_folder_to_point_at():
    (warning,) = class_summary(_index([0, 1, 0, 1], ["train", "val"]), "data/hym").warnings
    assert "split" in warning and "data/hym/train" in warning


def test_a_folder_without_labels_is_warned_about():
    (warning,) = class_summary(_index([-1, -1, -1], []), "data/loose").warnings
    assert warning.startswith("no labels")


def test_one_class_holding_most_images_is_warned_about():
    labels = [0] * 19 + [1]
    (warning,) = class_summary(_index(labels, ["cats", "dogs"]), "data").warnings
    assert "'cats' holds 95.0%" in warning
