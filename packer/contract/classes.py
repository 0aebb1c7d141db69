"""Class names: what a label means travels with the data, so every reader agrees.

A label is an index into the data set's class names, in the order the source gives them
(sorted class folders, a Parquet ClassLabel, ...). The names travel with the packed
batches two ways, and a checkpoint stores the names its head was trained on:

- a Flight stream: its schema metadata `class_names` (JSON list), in get_schema and in
  every do_get;
- a packed folder: OUT/classes.json (a JSON list).

A reader whose data names classes in another order, or a subset of them, maps its labels
by name onto the model's (`label_mapping`): a val folder holding only `bees/` labels its
images 0, which the model trained on ["ants", "bees"] knows as 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer.contract.files import write_bytes_atomically

CLASSES_FILE = "classes.json"
CLASS_NAMES_KEY = b"class_names"


class UnknownClasses(ValueError):
    """The data names classes the model was not trained on."""


def schema_class_names(schema: pa.Schema) -> list[str] | None:
    """The class names in a packed schema's metadata; None when it carries none."""
    raw = (schema.metadata or {}).get(CLASS_NAMES_KEY)
    return _names(json.loads(raw), "schema metadata") if raw is not None else None


def write_class_names(out_dir: Path, class_names: list[str]) -> None:
    """OUT/classes.json: the class names in label order, e.g. ["ants", "bees"]."""
    write_bytes_atomically(Path(out_dir) / CLASSES_FILE, json.dumps(list(class_names)).encode())


def read_class_names(root: Path) -> list[str] | None:
    """The class names of a packed folder, None when it has no classes.json.

    Older folders may hold {"classes": [...]} or {"num_classes": n}; a bare count gives
    the names "0".."n-1". Anything else is a ValueError naming the file.
    """
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if isinstance(value, dict) and isinstance(value.get("classes"), list):
        value = value["classes"]
    elif isinstance(value, dict) and isinstance(value.get("num_classes"), int):
        value = [str(i) for i in range(value["num_classes"])]
    return _names(value, str(path))


def label_mapping(source: list[str], target: list[str]) -> np.ndarray:
    """For each label of `source`, the label of the same class name in `target`.

    label_mapping(["bees"], ["ants", "bees"]) -> [1]. A source class the target does not
    name raises UnknownClasses naming it (and the target's classes).
    """
    position = {name: i for i, name in enumerate(target)}
    unknown = [name for name in source if name not in position]
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:5]) + (
            ", ..." if len(unknown) > 5 else ""
        )
        known = ", ".join(target[:8]) + (", ..." if len(target) > 8 else "")
        raise UnknownClasses(
            f"class{'es' * (len(unknown) > 1)} {shown} of the data "
            f"{'are' if len(unknown) > 1 else 'is'} not among the model's {len(target)} "
            f"classes ({known})"
        )
    return np.array([position[name] for name in source], dtype=np.int64)


def remap_labels(labels: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """`labels` through `mapping` (label_mapping's), -1 (no label) kept as it is; a label
    past the mapping is a ValueError (the data's classes file is short)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and int(labels.max()) >= len(mapping):
        raise ValueError(f"label {int(labels.max())} has no class name ({len(mapping)} named)")
    return np.where(labels >= 0, mapping[np.maximum(labels, 0)], -1) if len(mapping) else labels


def _names(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{where}: expected a JSON list of class names")
    return value
