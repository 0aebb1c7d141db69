"""`DatasetError`: the dataset path itself is wrong, in a way one line can explain."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset path that cannot be a dataset: missing, empty, no images, a single file.

    str(e) is one line that names the problem and the fix, e.g. "dataset '/data/x' holds
    no images: give a folder of class subfolders of .jpg/.png/... files, WebDataset
    *.tar shards or *.parquet files". A command line prints it as is, without a traceback.
    """
