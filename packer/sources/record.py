"""One image's location, as a source lists it and the index stores it.

image_folder  /data/imgs/cat/001.jpg           offset=-1   length=-1    source_row=-1
webdataset    /data/shards/shard-000.tar       offset=1536 length=4821  source_row=-1
parquet       /data/train-0.parquet            offset=-1   length=-1    source_row=17
"""

from __future__ import annotations

from dataclasses import dataclass

from packer.image.reject import REJECT_REASONS

# The id suffix of the stand-in record for a shard or Parquet file that cannot be listed.
UNREADABLE = "#unreadable"


@dataclass(frozen=True)
class Record:
    """One image's location. `nbytes` is its encoded size when a listing gives it, else -1.

    `width` and `height` are the image's size when the dataset's metadata states it (a
    WebDataset sample's .json, a Parquet file's size columns: `SizeColumns`), else -1:
    then the index reads the header. `label_name` is a label given as text (Parquet),
    numbered once every file is known.

    `error` is set (to "read_error") only on the stand-in record of a container that could
    not be listed: "shard-7.tar/#unreadable" keeps a broken shard counted as rejected
    instead of silently missing, or failing the whole scan.
    """

    image_id: str
    uri: str
    offset: int
    length: int
    source_row: int  # the row of a Parquet file, -1 for the other kinds
    label: int
    nbytes: int = -1
    error: str | None = None
    width: int = -1
    height: int = -1
    label_name: str | None = None

    def __post_init__(self) -> None:
        if not self.image_id:
            raise ValueError("a record needs a non-empty image_id")
        if self.source_row < -1 or self.offset < -1 or self.length < -1:
            raise ValueError(f"bad location for {self.image_id}: {self}")
        if self.error is not None and self.error not in REJECT_REASONS:
            raise ValueError(f"unknown error reason {self.error!r} for {self.image_id}")

    @classmethod
    def unreadable(cls, name: str, uri: str) -> Record:
        """The stand-in for container `name` (relative to the root) that cannot be listed."""
        return cls(f"{name}/{UNREADABLE}", uri, -1, -1, -1, -1, error="read_error")
