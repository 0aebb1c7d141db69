"""Class names travel with the data (packer/contract/classes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from packer.contract.classes import (
    UnknownClasses,
    label_mapping,
    read_class_names,
    remap_labels,
    schema_class_names,
    write_class_names,
)
from packer.contract.schema import packed_schema


def test_a_subset_of_the_classes_maps_by_name_onto_the_models():
    assert label_mapping(["bees"], ["ants", "bees"]).tolist() == [1]
    mapping = label_mapping(["b", "a"], ["a", "b", "c"])
    assert remap_labels(np.array([0, 1, -1, 0]), mapping).tolist() == [1, 0, -1, 1]


def test_a_class_the_model_does_not_know_is_refused_by_name():
    with pytest.raises(UnknownClasses, match="'wasps' of the data is not among the model's 2"):
        label_mapping(["ants", "wasps"], ["ants", "bees"])


def test_a_label_past_the_names_is_an_error():
    with pytest.raises(ValueError, match="label 2 has no class name"):
        remap_labels(np.array([2]), label_mapping(["a", "b"], ["a", "b"]))


def test_a_stream_schema_names_its_classes_and_a_batch_schema_need_not():
    assert schema_class_names(packed_schema(16, 64, 1, class_names=["ants", "bees"])) == [
        "ants",
        "bees",
    ]
    assert schema_class_names(packed_schema(16, 64, 1)) is None


def test_classes_json_round_trips_and_old_forms_still_read(tmp_path):
    write_class_names(tmp_path, ["ants", "bees"])
    assert read_class_names(tmp_path) == ["ants", "bees"]
    (tmp_path / "classes.json").write_text('{"num_classes": 3}')
    assert read_class_names(tmp_path) == ["0", "1", "2"]
    (tmp_path / "classes.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="classes.json"):
        read_class_names(tmp_path)
    assert read_class_names(tmp_path / "elsewhere") is None
