"""The packed-batch contract: Arrow round trip, schema metadata, and the layout it promises.

The layout every producer must keep (and `layout_violations` checks): in each sequence an
image's tokens are contiguous, images take segments 1..k in slot order, padding (segment
0) fills only the tail, and each token's (row, col) lies in its image's patch grid, no
position twice. Batches come from a small generator of random layouts and from the
packer's own planner and fill on real (and broken) image files.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer.config import PackingConfig
from packer.contract.schema import (
    COLUMNS,
    SCHEMA_VERSION,
    PackedBatch,
    from_record_batch,
    packed_schema,
    to_record_batch,
)
from packer.fill.batch import fill_batch
from packer.index.cache import load_index
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from tests.packer.image_cases import write_odd_images


def layout_violations(batch: PackedBatch) -> list[str]:
    """Every way `batch` breaks the promised layout; empty when it keeps it."""
    problems = []
    if len(batch.image_ids) != int(batch.images_per_seq.sum()):
        problems.append("per-image arrays do not match images_per_seq")
    first_image = 0
    for s in range(batch.num_sequences):
        segments = batch.segment_ids[s]
        k = int(batch.images_per_seq[s])
        real = int(np.count_nonzero(segments))
        if np.any(segments[:real] == 0) or np.any(segments[real:] != 0):
            problems.append(f"sequence {s}: padding before a real token")
        runs = segments[:real][np.r_[True, np.diff(segments[:real]) != 0]] if real else []
        if list(runs) != list(range(1, k + 1)):
            problems.append(f"sequence {s}: segments {list(runs)} are not 1..{k}, one run each")
        pad = slice(real, None)
        if np.any(batch.patch_rows[s, pad]) or np.any(batch.patch_cols[s, pad]):
            problems.append(f"sequence {s}: padding tokens carry coordinates")
        for slot in range(1, k + 1):
            i = first_image + slot - 1
            if i >= len(batch.image_grid_h):
                break
            rows = batch.patch_rows[s][segments == slot].astype(np.int64)
            cols = batch.patch_cols[s][segments == slot].astype(np.int64)
            gh, gw = int(batch.image_grid_h[i]), int(batch.image_grid_w[i])
            if np.any((rows < 0) | (rows >= gh) | (cols < 0) | (cols >= gw)):
                problems.append(f"sequence {s} slot {slot}: a token outside its {gh}x{gw} grid")
            if len(np.unique(rows * gw + cols)) != len(rows):
                problems.append(f"sequence {s} slot {slot}: a grid position twice")
        first_image += k
    return problems


def assert_same_batch(got: PackedBatch, want: PackedBatch) -> None:
    for name in ("patches", "segment_ids", "patch_rows", "patch_cols", "images_per_seq"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("image_grid_h", "image_grid_w", "labels"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.image_ids == want.image_ids
    assert (got.patch_size, got.config_version) == (want.patch_size, want.config_version)


# -- a generator of random layouts ---------------------------------------------------------


@st.composite
def packed_batches(draw: st.DrawFn) -> PackedBatch:
    """A batch of 1-3 sequences, each filled by images of random grids and kept tokens."""
    patch_size = draw(st.sampled_from([1, 2, 4]))
    seq_len = draw(st.integers(1, 40))
    num_sequences = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    patches = np.zeros((num_sequences, seq_len, patch_size * patch_size * 3), np.uint8)
    segment_ids = np.zeros((num_sequences, seq_len), np.int32)
    patch_rows = np.zeros((num_sequences, seq_len), np.int16)
    patch_cols = np.zeros((num_sequences, seq_len), np.int16)
    images_per_seq = np.zeros(num_sequences, np.int32)
    grids_h, grids_w, labels, ids = [], [], [], []
    for s in range(num_sequences):
        used = 0
        while used < seq_len and draw(st.booleans()):
            grid_h, grid_w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
            kept = draw(st.integers(1, min(grid_h * grid_w, seq_len - used)))
            tokens = np.sort(rng.choice(grid_h * grid_w, kept, replace=False))
            images_per_seq[s] += 1
            patches[s, used : used + kept] = rng.integers(0, 256, patches.shape[2:])
            segment_ids[s, used : used + kept] = images_per_seq[s]
            patch_rows[s, used : used + kept] = tokens // grid_w
            patch_cols[s, used : used + kept] = tokens % grid_w
            used += kept
            grids_h.append(grid_h)
            grids_w.append(grid_w)
            labels.append(draw(st.integers(-1, 2**40)))
            ids.append(draw(st.text(max_size=8)))
    return PackedBatch(
        patches=patches,
        segment_ids=segment_ids,
        patch_rows=patch_rows,
        patch_cols=patch_cols,
        images_per_seq=images_per_seq,
        image_grid_h=np.array(grids_h, np.int16),
        image_grid_w=np.array(grids_w, np.int16),
        labels=np.array(labels, np.int64),
        image_ids=ids,
        patch_size=patch_size,
        config_version=draw(st.integers(0, 1000)),
    )


@settings(max_examples=60, deadline=None)
@given(batch=packed_batches())
def test_a_packed_batch_survives_the_arrow_round_trip_exactly(batch):
    assert layout_violations(batch) == []
    assert_same_batch(from_record_batch(to_record_batch(batch)), batch)


@settings(max_examples=30, deadline=None)
@given(batch=packed_batches(), data=st.data())
def test_a_slice_of_sequences_reads_back_as_those_sequences(batch, data):
    start = data.draw(st.integers(0, batch.num_sequences - 1))
    stop = data.draw(st.integers(start + 1, batch.num_sequences))
    got = from_record_batch(to_record_batch(batch).slice(start, stop - start))
    first, last = int(batch.images_per_seq[:start].sum()), int(batch.images_per_seq[:stop].sum())
    np.testing.assert_array_equal(got.patches, batch.patches[start:stop])
    np.testing.assert_array_equal(got.segment_ids, batch.segment_ids[start:stop])
    np.testing.assert_array_equal(got.images_per_seq, batch.images_per_seq[start:stop])
    np.testing.assert_array_equal(got.labels, batch.labels[first:last])
    assert got.image_ids == batch.image_ids[first:last]


def _with_segments(batch: PackedBatch, segments: list[int]) -> PackedBatch:
    return PackedBatch(**dict(vars(batch), segment_ids=np.array([segments], np.int32)))


def _two_images() -> PackedBatch:
    """The worked example of the schema docstring (see the test below)."""
    return PackedBatch(
        patches=np.arange(8 * 12, dtype=np.uint8).reshape(1, 8, 12),
        segment_ids=np.array([[1, 1, 1, 1, 2, 2, 0, 0]], np.int32),
        patch_rows=np.array([[0, 0, 1, 1, 0, 0, 0, 0]], np.int16),
        patch_cols=np.array([[0, 1, 0, 1, 0, 2, 0, 0]], np.int16),
        images_per_seq=np.array([2], np.int32),
        image_grid_h=np.array([2, 1], np.int16),
        image_grid_w=np.array([2, 3], np.int16),
        labels=np.array([7, -1], np.int64),
        image_ids=["cat/1.jpg", "shard-0.tar/00042"],
        patch_size=2,
        config_version=3,
    )


@pytest.mark.parametrize(
    ("segments", "problem"),
    [
        ([1, 1, 0, 1, 1, 2, 2, 0], "padding before a real token"),
        ([1, 1, 2, 2, 1, 1, 0, 0], "one run each"),
        ([2, 2, 2, 2, 1, 1, 0, 0], "one run each"),
        ([1, 1, 1, 1, 1, 1, 0, 0], "not 1..2"),
    ],
)
def test_the_layout_check_catches_gaps_split_images_and_slots_out_of_order(segments, problem):
    assert layout_violations(_two_images()) == []
    found = layout_violations(_with_segments(_two_images(), segments))
    assert any(problem in line for line in found), found


def test_the_layout_check_catches_a_token_outside_its_grid():
    batch = _two_images()
    batch.patch_cols[0, 5] = 3  # the second image is 1x3: column 3 does not exist
    assert any("outside its 1x3 grid" in line for line in layout_violations(batch))


# -- the contract's metadata and worked example --------------------------------------------


def test_worked_example_of_the_schema_docstring_is_what_arrow_holds():
    record_batch = to_record_batch(_two_images())
    assert record_batch.column("segment_ids").to_pylist() == [[1, 1, 1, 1, 2, 2, 0, 0]]
    assert record_batch.column("patch_rows").to_pylist() == [[0, 0, 1, 1, 0, 0, 0, 0]]
    assert record_batch.column("patch_cols").to_pylist() == [[0, 1, 0, 1, 0, 2, 0, 0]]
    assert record_batch.column("image_grid_h").to_pylist() == [[2, 1]]
    assert record_batch.column("image_grid_w").to_pylist() == [[2, 3]]
    assert record_batch.column("labels").to_pylist() == [[7, -1]]
    assert record_batch.column("image_ids").to_pylist() == [["cat/1.jpg", "shard-0.tar/00042"]]
    assert record_batch.column("patches").type.shape == [8, 12]


def test_schema_has_the_contract_columns_and_metadata():
    schema = to_record_batch(_two_images()).schema
    assert tuple(schema.names) == COLUMNS
    assert schema.equals(packed_schema(2, 8, 3), check_metadata=True)
    assert schema.metadata == {
        b"patch_size": b"2",
        b"seq_len": b"8",
        b"schema_version": str(SCHEMA_VERSION).encode(),
        b"config_version": b"3",
    }


def test_a_table_and_a_batch_without_metadata_read_back_the_same():
    record_batch = to_record_batch(_two_images())
    bare = record_batch.replace_schema_metadata(None)
    from_bare = from_record_batch(bare)
    assert from_bare.patch_size == 2  # inferred from the patch width, 2*2*3 = 12
    assert from_bare.config_version == 0
    assert_same_batch(from_record_batch(pa.Table.from_batches([record_batch])), _two_images())


def test_a_record_batch_missing_a_contract_column_is_refused_naming_it():
    record_batch = to_record_batch(_two_images()).drop_columns(["labels"])
    with pytest.raises(ValueError, match="missing columns \\['labels'\\]"):
        from_record_batch(record_batch)


def test_an_all_padding_batch_round_trips_with_no_images():
    empty = PackedBatch.empty(3, 16, 4)
    assert layout_violations(empty) == []
    got = from_record_batch(to_record_batch(empty))
    assert_same_batch(got, empty)
    assert (got.num_images, got.real_tokens, got.pad_tokens) == (0, 0, 48)


# -- the packer's own batches keep the layout ----------------------------------------------


@pytest.fixture(scope="module")
def odd_index(tmp_path_factory):
    """The index of good and broken images (one only fails at decode: truncated)."""
    root = tmp_path_factory.mktemp("odd")
    write_odd_images(root)
    return load_index(str(root), cache_dir=root.parent / "odd-cache")


@settings(max_examples=12, deadline=None)
@given(
    patch_size=st.sampled_from([8, 16]),
    side=st.integers(4, 12),  # max_res in patches; seq_len is at least side * side
    extra=st.integers(0, 64),
    batch_size=st.integers(1, 4),
    max_images=st.integers(1, 8),
    pack_window=st.integers(1, 24),
    packing=st.sampled_from(["exact_fit", "best_fit", "next_fit"]),
    drop_rate=st.sampled_from([0.0, 0.25, 0.5]),
    seed=st.integers(0, 3),
)
def test_planned_and_filled_batches_keep_the_layout_through_arrow(
    odd_index,
    patch_size,
    side,
    extra,
    batch_size,
    max_images,
    pack_window,
    packing,
    drop_rate,
    seed,
):
    config = PackingConfig(
        patch_size=patch_size,
        seq_len=side * side + extra,
        batch_size=batch_size,
        max_images_per_seq=max_images,
        min_res=patch_size,
        max_res=side * patch_size,
        token_drop="constant" if drop_rate else "none",
        drop_rate=drop_rate,
        packing=packing,
        pack_window=pack_window,
        seed=seed,
    )
    for plan in EpochPlanner(odd_index, ConfigHistory.start(config), 0).iter_plans():
        batch = fill_batch(plan).packed
        assert layout_violations(batch) == []
        assert_same_batch(from_record_batch(to_record_batch(batch)), batch)


def test_the_odd_images_include_one_the_fill_rejects(odd_index):
    # The property above covers the fill moving images up past a reject only if one exists.
    config = PackingConfig(seq_len=256, max_res=128, batch_size=2, pack_window=8)
    plans = EpochPlanner(odd_index, ConfigHistory.start(config), 0).iter_plans()
    assert any(fill_batch(plan).rejected for plan in plans)
