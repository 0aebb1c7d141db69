"""The token layouts of the batches sent lately (service/job/layouts.py): the dashboard's."""

from __future__ import annotations

import numpy as np
import pytest

from packer.contract.cursor import BatchMetadata
from packer.contract.schema import PackedBatch
from service.job.layouts import RecentLayouts, SentLayout


def _packed(rows: list[list[int]], image_ids: list[str]) -> PackedBatch:
    packed = PackedBatch.empty(len(rows), len(rows[0]), 4)
    packed.segment_ids[:] = rows
    packed.images_per_seq = np.array([max(r) for r in rows], np.int32)
    packed.image_ids = image_ids
    packed.labels = np.arange(len(image_ids), dtype=np.int64)
    return packed


def _metadata(batch: int) -> BatchMetadata:
    return BatchMetadata(epoch=0, batch=batch, global_batch=2 * batch + 1, rank=1, config_version=3)


def test_a_layout_gives_each_image_its_token_span():
    packed = _packed([[1, 1, 1, 2, 2, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], ["a", "b", "c"])
    (first, last) = SentLayout.of(_metadata(4), packed).sequences()
    assert first["segments"] == [
        {"slot": 1, "start": 0, "length": 3, "image_id": "a", "label": 0},
        {"slot": 2, "start": 3, "length": 2, "image_id": "b", "label": 1},
    ]
    assert (first["row"], first["real_tokens"], first["seq_len"]) == (0, 5, 6)
    assert (first["batch"], first["global_batch"], first["rank"]) == (4, 9, 1)
    assert first["config_version"] == 3
    assert (last["row"], last["real_tokens"]) == (2, 6)  # the empty row 1 is skipped
    assert last["segments"][0]["image_id"] == "c"


def test_recent_layouts_keep_the_latest_sequences_oldest_first():
    recent = RecentLayouts(keep=2)
    recent.add(_metadata(0), _packed([[1, 0]], ["x"]))
    recent.add(_metadata(1), _packed([[0, 0]], []))  # all padding: nothing to draw
    recent.add(_metadata(2), _packed([[1, 1], [1, 0]], ["y", "z"]))
    recent.add(_metadata(3), _packed([[1, 2]], ["u", "v"]))
    ids = [s["segments"][0]["image_id"] for s in recent.sequences()]
    assert ids == ["z", "u"]  # keep=2 sequences by default, oldest first
    assert [s["batch"] for s in recent.sequences(limit=10)] == [2, 2, 3]


@pytest.mark.parametrize("limit", [1, 3])
def test_recent_sequences_honour_the_limit(limit):
    recent = RecentLayouts(keep=8)
    for batch in range(3):
        recent.add(_metadata(batch), _packed([[1, 0]], [f"i{batch}"]))
    assert len(recent.sequences(limit)) == limit
