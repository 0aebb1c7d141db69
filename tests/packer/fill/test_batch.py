"""The fill step on real image files, without Ray."""

from pathlib import Path

import numpy as np
import pytest

from packer.config import PackingConfig
from packer.contract.schema import from_record_batch, to_record_batch
from packer.fill.batch import fill_batch
from packer.image.imageio import decode_resized
from packer.image.patchify import unpatchify
from packer.index.cache import load_index
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from packer.sample_data import write_sample_dataset
from tests.packer import image_cases as cases
from tests.packer.image_cases import write_odd_images

CONFIG = PackingConfig(seq_len=256, max_res=192, batch_size=4, pack_window=32)


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("odd")
    expected = write_odd_images(root)
    return root, expected


def _plans(root: Path, config: PackingConfig = CONFIG):
    index = load_index(str(root), cache_dir=root.parent / f"{root.name}-cache")
    return index, list(EpochPlanner(index, ConfigHistory.start(config), 0).iter_plans())


def test_unpatchify_of_packed_image_equals_the_resized_image(tmp_path):
    write_sample_dataset(tmp_path / "data", 12, seed=3)
    _, plans = _plans(tmp_path / "data")
    checked = 0
    for plan in plans:
        packed = from_record_batch(to_record_batch(fill_batch(plan).packed))
        offset = 0
        for i, image_id in enumerate(plan.image_ids):
            s = int(plan.sequence[i])
            if i and plan.sequence[i - 1] != s:
                offset = 0
            gh, gw = int(plan.grid_h[i]), int(plan.grid_w[i])
            tokens = packed.patches[s, offset : offset + gh * gw]
            expected = decode_resized(Path(plan.uri[i]).read_bytes(), gw * 16, gh * 16)
            np.testing.assert_array_equal(unpatchify(tokens, gh, gw, 16), expected)
            assert packed.image_ids[i] == image_id
            offset += gh * gw
            checked += 1
    assert checked == 12


def test_every_odd_image_is_packed_or_rejected_with_its_reason(odd_dataset):
    root, expected = odd_dataset
    index, plans = _plans(root)
    header_rejects = {
        i: e
        for i, e in zip(
            index.column("image_id").to_pylist(), index.column("error").to_pylist(), strict=True
        )
        if e is not None
    }
    packed_ids, fill_rejects = [], {}
    for plan in plans:
        result = fill_batch(plan)
        packed_ids += result.packed.image_ids
        fill_rejects.update({i: reason for i, reason, _ in result.rejected})
    rejected = {**header_rejects, **fill_rejects}
    assert len(packed_ids) + len(rejected) == len(expected)
    assert rejected == {k: v for k, v in expected.items() if v is not None}
    assert sorted(packed_ids) == sorted(k for k, v in expected.items() if v is None)


def test_a_corrupt_image_lets_the_later_images_of_its_sequence_move_up(odd_dataset):
    root, _ = odd_dataset
    _, plans = _plans(root, CONFIG.replace(batch_size=64))
    (plan,) = plans
    result = fill_batch(plan)
    batch = result.packed
    assert result.rejected_reasons == ["truncated"]
    for row, k in zip(batch.segment_ids, batch.images_per_seq.tolist(), strict=True):
        real = row[row > 0]
        # Slots 1..k, contiguous, in order; padding only at the tail.
        assert real.tolist() == sorted(real.tolist())
        assert set(real.tolist()) == set(range(1, k + 1))
        assert np.all(row[len(real) :] == 0)
    assert batch.num_images == plan.num_images - 1


def test_decode_warnings_become_the_images_notes_not_stderr(tmp_path, capfd):
    from tests.packer.format_cases import corrupt_exif_jpeg

    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "exif.jpg").write_bytes(corrupt_exif_jpeg())
    (tmp_path / "data" / "a" / "plain.jpg").write_bytes(cases.photo_jpeg())
    _, plans = _plans(tmp_path / "data")
    notes = [note for plan in plans for note in fill_batch(plan).notes]
    assert {(n.image_id, n.kind) for n in notes} == {("a/exif.jpg", "corrupt_metadata")}
    assert capfd.readouterr().err == ""
